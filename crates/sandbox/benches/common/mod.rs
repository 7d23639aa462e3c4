//! What the sandbox's benchmarks share: how they print a measurement and read `--runs`.

/// Prints the median and the 10th and 90th percentiles of `samples_ms` (milliseconds).
pub fn summary(name: &str, mut samples_ms: Vec<f64>) {
    samples_ms.sort_by(f64::total_cmp);
    let at = |q: f64| samples_ms[((samples_ms.len() - 1) as f64 * q).round() as usize];
    println!(
        "{name:<52} median {:>7.2} ms   p10 {:>7.2} ms   p90 {:>7.2} ms   (n={})",
        at(0.5),
        at(0.1),
        at(0.9),
        samples_ms.len()
    );
}

/// `--runs N` from the command line, else `default`.
pub fn runs(default: usize) -> usize {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == "--runs")
        .and_then(|i| args.get(i + 1))
        .and_then(|n| n.parse().ok())
        .unwrap_or(default)
}
