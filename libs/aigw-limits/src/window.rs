//! Fixed windows aligned to the Unix epoch (CONTRACT §13): window `n` of `secs` seconds
//! covers `[n·secs, (n+1)·secs)`. Every node computes the same window for the same
//! instant, so counters keyed by the window index agree across the fleet without any
//! coordination, and a new window is a new key (the old one expires).

/// The window containing an instant.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Window {
    /// `floor(now / secs)`.
    pub index: u64,
    /// Milliseconds from now to the window's end (≥ 1).
    pub reset_ms: u64,
    /// The window's length in milliseconds.
    pub len_ms: u64,
}

impl Window {
    /// The window of `secs` seconds (≥ 1) containing `now_ms`.
    pub fn at(now_ms: u64, secs: u64) -> Window {
        let len_ms = secs.max(1).saturating_mul(1000);
        let index = now_ms / len_ms;
        let end = index.saturating_add(1).saturating_mul(len_ms);
        Window { index, reset_ms: end.saturating_sub(now_ms).max(1), len_ms }
    }

    /// Whole seconds to the window's end, rounded up (`retry-after`).
    pub fn reset_secs(&self) -> u64 {
        self.reset_ms.div_ceil(1000)
    }

    /// How long a counter of this window must live: to the window's end, plus a second
    /// for clock skew between nodes.
    pub fn ttl_ms(&self) -> u64 {
        self.reset_ms + 1000
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn windows() {
        // (now ms, window secs, index, reset ms)
        for (now, secs, index, reset) in [
            (0, 60, 0, 60_000),
            (59_999, 60, 0, 1),
            (60_000, 60, 1, 60_000),
            (61_500, 60, 1, 58_500),
            (1_700_000_000_123, 60, 28_333_333, 39_877),
            (5, 1, 0, 995),
            (1_000, 0, 1, 1_000), // secs 0 is taken as 1
        ] {
            let w = Window::at(now, secs);
            assert_eq!((w.index, w.reset_ms), (index, reset), "{now} {secs}");
        }
        assert_eq!(Window::at(61_500, 60).reset_secs(), 59);
        assert_eq!(Window::at(59_999, 60).reset_secs(), 1);
        assert_eq!(Window::at(0, 60).ttl_ms(), 61_000);
    }
}
