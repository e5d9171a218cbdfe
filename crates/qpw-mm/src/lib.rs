//! placeholder until issue 3 lands
