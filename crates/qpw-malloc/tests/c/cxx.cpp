// A C++ program on the library: operator new/delete (libstdc++'s call
// malloc/free), over-aligned new (aligned_alloc), containers and strings,
// std::thread. Prints "cxx: ok <checksum>" or names the failure.
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <unordered_map>
#include <vector>

struct alignas(256) Wide {
    unsigned char b[300];
};

#define FAIL(...) (std::fprintf(stderr, __VA_ARGS__), std::fprintf(stderr, "\n"), std::exit(1))

int main() {
    std::uint64_t sum = 0;
    std::mutex m;
    std::vector<std::thread> ts;
    for (int t = 0; t < 4; t++) {
        ts.emplace_back([t, &sum, &m] {
            std::map<int, std::string> tree;
            std::unordered_map<std::string, std::vector<int>> hash;
            for (int i = 0; i < 20000; i++) {
                tree[i * 7 % 10007] = std::to_string(i) + std::string(i % 50, 'x');
                hash[std::to_string(i % 3000)].push_back(i);
            }
            std::vector<std::unique_ptr<Wide>> wides;
            for (int i = 0; i < 2000; i++) {
                wides.emplace_back(new Wide());
                if (reinterpret_cast<std::uintptr_t>(wides.back().get()) % 256)
                    FAIL("over-aligned new is not 256-aligned");
                wides.back()->b[299] = (unsigned char)i;
            }
            std::uint64_t s = 0;
            for (auto &kv : tree) s += kv.second.size();
            for (auto &kv : hash) s += kv.second.size();
            for (auto &w : wides) s += w->b[299];
            std::lock_guard<std::mutex> g(m);
            sum += s + (std::uint64_t)t;
        });
    }
    for (auto &t : ts) t.join();
    std::printf("cxx: ok %llu\n", (unsigned long long)sum);
    return 0;
}
