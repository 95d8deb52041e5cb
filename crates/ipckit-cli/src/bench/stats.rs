//! Statistics of one measurement: percentiles of round-trip samples and
//! rates of a one-way stream.

/// Nearest-rank percentile of `sorted` (ascending) at `q` in `0.0..=1.0`;
/// `None` when there are no samples.
pub fn percentile(sorted: &[f64], q: f64) -> Option<f64> {
    if sorted.is_empty() {
        return None;
    }
    let rank = (q * sorted.len() as f64).ceil() as usize;
    Some(sorted[rank.clamp(1, sorted.len()) - 1])
}

/// The median of `sorted` (mean of the two middle samples for an even count).
pub fn median(sorted: &[f64]) -> Option<f64> {
    let n = sorted.len();
    match n {
        0 => None,
        _ if n % 2 == 1 => Some(sorted[n / 2]),
        _ => Some((sorted[n / 2 - 1] + sorted[n / 2]) / 2.0),
    }
}

/// Round-trip latency summary, in nanoseconds.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Latency {
    /// Median round trip.
    pub median: f64,
    /// 99th percentile.
    pub p99: f64,
    /// 99.9th percentile.
    pub p999: f64,
    /// How many round trips were timed.
    pub samples: usize,
}

impl Latency {
    /// Summarises `samples` (round trips in ns, any order); `None` when empty.
    pub fn from_samples(mut samples: Vec<f64>) -> Option<Latency> {
        samples.sort_by(f64::total_cmp);
        Some(Latency {
            median: median(&samples)?,
            p99: percentile(&samples, 0.99)?,
            p999: percentile(&samples, 0.999)?,
            samples: samples.len(),
        })
    }
}

/// One-way throughput of a stream of equal messages.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Throughput {
    /// Messages delivered per second.
    pub msgs_per_s: f64,
    /// Payload bytes delivered per second.
    pub bytes_per_s: f64,
    /// How many messages were sent.
    pub messages: u64,
}

impl Throughput {
    /// `messages` of `size` bytes delivered in `secs` seconds.
    pub fn new(messages: u64, size: usize, secs: f64) -> Throughput {
        let secs = secs.max(1e-9);
        Throughput {
            msgs_per_s: messages as f64 / secs,
            bytes_per_s: messages as f64 * size as f64 / secs,
            messages,
        }
    }
}

impl Throughput {
    /// The window with the median message rate (the upper middle one of an
    /// even count); `None` when there are none.
    pub fn median_of(mut windows: Vec<Throughput>) -> Option<Throughput> {
        windows.sort_by(|a, b| a.msgs_per_s.total_cmp(&b.msgs_per_s));
        windows.get(windows.len() / 2).copied()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_of_one_to_a_thousand() {
        let xs: Vec<f64> = (1..=1000).map(f64::from).collect();
        assert_eq!(percentile(&xs, 0.5), Some(500.0));
        assert_eq!(percentile(&xs, 0.99), Some(990.0));
        assert_eq!(percentile(&xs, 0.999), Some(999.0));
        assert_eq!(percentile(&xs, 1.0), Some(1000.0));
        assert_eq!(percentile(&xs, 0.0), Some(1.0));
        assert_eq!(median(&xs), Some(500.5));
    }

    #[test]
    fn small_and_empty_samples() {
        assert_eq!(percentile(&[], 0.5), None);
        assert_eq!(median(&[]), None);
        assert_eq!(median(&[3.0]), Some(3.0));
        assert_eq!(percentile(&[3.0], 0.999), Some(3.0));
        assert_eq!(median(&[1.0, 2.0, 10.0]), Some(2.0));
        assert_eq!(percentile(&[1.0, 2.0, 3.0, 4.0], 0.99), Some(4.0));
    }

    #[test]
    fn latency_sorts_its_samples() {
        let l = Latency::from_samples(vec![5.0, 1.0, 4.0, 2.0, 3.0]).unwrap();
        assert_eq!(l.median, 3.0);
        assert_eq!(l.p99, 5.0);
        assert_eq!(l.p999, 5.0);
        assert_eq!(l.samples, 5);
        assert!(Latency::from_samples(Vec::new()).is_none());
    }

    #[test]
    fn median_window() {
        let w = |m| Throughput::new(m, 8, 1.0);
        let t = Throughput::median_of(vec![w(900), w(10), w(1000), w(950), w(20)]).unwrap();
        assert_eq!(t.messages, 900);
        assert_eq!(Throughput::median_of(vec![w(5), w(7)]).unwrap().messages, 7);
        assert!(Throughput::median_of(Vec::new()).is_none());
    }

    #[test]
    fn throughput_rates() {
        let t = Throughput::new(1000, 64, 0.5);
        assert_eq!(t.msgs_per_s, 2000.0);
        assert_eq!(t.bytes_per_s, 128_000.0);
    }
}
