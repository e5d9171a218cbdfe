# realprog's CPython workload: build N dicts, dump them to JSON, load them
# back, check, free everything; print the line every realprog program of
# ours prints (ops= ns= hwm_kib= rss_after_kib=).
import gc
import json
import sys
import time


def status_kib(key):
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    return -1


n = int(sys.argv[1])
t = time.perf_counter_ns()
data = [
    {
        "id": i,
        "name": "item-%d" % i,
        "tags": ["a", "b", str(i % 7)],
        "price": i * 0.25,
        "nested": {"x": i, "y": [i, i + 1, i + 2]},
    }
    for i in range(n)
]
text = json.dumps(data)
back = json.loads(text)
if len(back) != n or back[-1]["id"] != n - 1 or back[-1]["nested"]["y"][2] != n + 1:
    sys.exit("the round trip lost data")
ns = time.perf_counter_ns() - t
del data, text, back
gc.collect()
print("ops=%d ns=%d hwm_kib=%d rss_after_kib=%d" % (n, ns, status_kib("VmHWM"), status_kib("VmRSS")))
