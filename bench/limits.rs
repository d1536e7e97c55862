//! The limiter with 1,000,000 keys resident: decisions per second on one
//! thread and on two, refusals per second, and resident bytes per key — the
//! figures of the README's performance section.
//!
//! `cargo bench --bench limits` (about a minute); `cargo bench --bench limits
//! -- --quick` is a smoke run of a few seconds on 20,000 keys (also what
//! `cargo test --benches` runs, since only `cargo bench` passes `--bench`).
//!
//! The workloads run side by side: every round runs each of them once, in
//! turn, so whatever drifts during the run (frequency, other processes, the
//! windows filling) touches them alike. Each figure is the median of the
//! rounds, with the slowest and fastest round.
//!
//! A decision is what one RCPT costs the limiter: `check` and then `commit`
//! (one accepted recipient in ten is `release`d instead, as when the MTA
//! refuses it). One decision in four gives the envelope sender, as the first
//! recipient of a transaction does, so the rotation signal runs too. The fake
//! clock advances one second per `keys / 1000` decisions, so windows slide
//! and every key sees about four decisions an hour on average. The journal is
//! drained (and dropped) every 65,536 decisions on the deciding thread, as
//! the state thread does every second.

// Benchmarks time themselves on the real clock.
#![allow(clippy::disallowed_methods)]

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::atomic::{AtomicU32, Ordering::Relaxed};
use std::sync::{Arc, Barrier};
use std::time::Instant;

use mailbrake::config::LimitsConfig;
use mailbrake::limits::{Clock, Decision, Limiter, Policy, Refusal, SenderKey, Time};

/// How big a run is.
#[derive(Debug, Clone, Copy)]
struct Sizes {
    keys: usize,
    rounds: usize,
    /// Decisions per round of each traffic workload (all threads together).
    decisions: usize,
}

const FULL: Sizes = Sizes {
    keys: 1_000_000,
    rounds: 7,
    decisions: 2_000_000,
};

const QUICK: Sizes = Sizes {
    keys: 20_000,
    rounds: 3,
    decisions: 100_000,
};

/// The fake clock's time when the fill ends (unix seconds).
const T0: Time = 1_700_000_000;
/// The fill spreads its keys over the hour before `T0`.
const FILL_SPAN: Time = 3599;
/// Decisions between journal drains, per thread.
const DRAIN_EVERY: usize = 1 << 16;
/// Recipients per transaction: one decision in this many gives MAIL FROM.
const RCPTS_PER_MAIL: usize = 4;
/// One accepted recipient in this many is released instead of committed.
const RELEASE_EVERY: usize = 10;
/// Checks per over-limit key per refusal round. With the top-up refusal,
/// 7 rounds give 42 refusals a key: under the default lock threshold (50), so
/// the refusal rounds stay on the over-limit path and never lock.
const REFUSALS_PER_KEY: usize = 5;
/// One key in this many is hot; hot keys get `HOT_SHARE_PCT` % of the
/// hot-key workload.
const HOT_EVERY: usize = 100;
const HOT_SHARE_PCT: u64 = 50;

/// Envelope senders, shared out among the keys (one per key, so rotation
/// counts one sender and never locks).
const SENDERS: [&str; 8] = [
    "newsletter@example.com",
    "billing@shop.example.net",
    "alice@example.org",
    "no-reply@customer.example",
    "bob.smith@mail.example.com",
    "orders@store.example",
    "info@association.example.org",
    "wordpress@site.example.net",
];

// === impl BenchClock ===

/// The limiter's clock, moved by the benchmark.
#[derive(Debug, Clone)]
struct BenchClock(Arc<AtomicU32>);

impl Clock for BenchClock {
    fn now(&self) -> Time {
        self.0.load(Relaxed)
    }
}

// === impl Rng ===

/// SplitMix64: small, fast and good enough to pick keys.
#[derive(Debug)]
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n`.
    fn below(&mut self, n: usize) -> usize {
        ((u128::from(self.next()) * n as u128) >> 64) as usize
    }
}

// === The resident keys ===

/// Key `i`: 60 % `auth:`, 10 % `vhost:`, 20 % `ip:` IPv4, 10 % `ip:` IPv6 /64.
fn key_for(i: usize) -> SenderKey {
    match i % 10 {
        0..=5 => SenderKey::auth(&format!("user{i}@mail{}.example.com", i % 997)),
        6 => SenderKey::vhost(&format!("shop-{i}")),
        7 | 8 => SenderKey::ip(client_for(i), 64),
        _ => SenderKey::ip(
            IpAddr::V6(Ipv6Addr::new(
                0x2001,
                0xdb8,
                (i >> 16) as u16,
                i as u16,
                0,
                0,
                0,
                1,
            )),
            64,
        ),
    }
}

/// The client address of key `i`'s sessions (checked against exempt networks).
fn client_for(i: usize) -> IpAddr {
    IpAddr::V4(Ipv4Addr::from(0x0A00_0000 | (i as u32 & 0x00FF_FFFF)))
}

fn sender_for(i: usize) -> &'static str {
    SENDERS[i % SENDERS.len()]
}

/// Recipients committed for key `i` by the fill: 1 to 12.
fn recipients_for(i: usize) -> usize {
    1 + i % 12
}

/// The keys filled to the limit (12/1h): the refusal workload's, kept out
/// of the traffic workloads so that they stay full and unlocked.
fn is_over_limit(i: usize) -> bool {
    recipients_for(i) == 12
}

/// Commits 1–12 recipients for each of `n` keys, the clock moving over the
/// hour before `T0`; returns the keys (their text shared with the limiter).
fn fill(l: &Limiter, clock: &AtomicU32, keys: &mut Vec<SenderKey>, n: usize) {
    for i in 0..n {
        let at = T0 - FILL_SPAN + (i as u64 * u64::from(FILL_SPAN) / n as u64) as Time;
        clock.store(at, Relaxed);
        let key = key_for(i);
        for r in 0..recipients_for(i) {
            let from = (r == 0).then(|| sender_for(i));
            match l.check(&key, Some(client_for(i)), from) {
                Decision::Accept(res) => l.commit(res),
                other => panic!("filling {key}: {other:?}"),
            }
        }
        keys.push(key);
        if i % 4096 == 4095 {
            drop(l.drain_journal());
        }
    }
    drop(l.drain_journal());
    clock.store(T0, Relaxed);
}

// === Workloads ===

/// What the limiter answered.
#[derive(Debug, Default, Clone, Copy)]
struct Outcomes {
    accepted: u64,
    over_limit: u64,
    locked: u64,
}

impl Outcomes {
    fn add(&mut self, o: Outcomes) {
        self.accepted += o.accepted;
        self.over_limit += o.over_limit;
        self.locked += o.locked;
    }

    fn describe(&self) -> String {
        let total = (self.accepted + self.over_limit + self.locked).max(1) as f64;
        let pct = |n: u64| 100.0 * n as f64 / total;
        format!(
            "{:.1} % accepted, {:.1} % over the limit, {:.1} % locked",
            pct(self.accepted),
            pct(self.over_limit),
            pct(self.locked)
        )
    }
}

/// Which keys the traffic goes to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mix {
    /// Every traffic key alike.
    Uniform,
    /// `HOT_SHARE_PCT` % of decisions on one key in `HOT_EVERY`.
    Hot,
}

impl Mix {
    fn draw(self, rng: &mut Rng, n: usize) -> usize {
        if self == Mix::Hot && rng.below(100) < HOT_SHARE_PCT as usize {
            return rng.below(n.div_ceil(HOT_EVERY)) * HOT_EVERY;
        }
        loop {
            let i = rng.below(n);
            if !is_over_limit(i) {
                return i;
            }
        }
    }

    fn name(self) -> &'static str {
        match self {
            Mix::Uniform => "uniform keys",
            Mix::Hot => "hot keys (50 % of decisions on 1 % of keys)",
        }
    }
}

/// One thread's share of a traffic round: check, then commit (or release).
fn traffic(
    l: &Limiter,
    clock: &AtomicU32,
    keys: &[SenderKey],
    mix: Mix,
    decisions: usize,
    seed: u64,
) -> Outcomes {
    let mut rng = Rng(seed);
    let mut out = Outcomes::default();
    let tick = (keys.len() / 1000).max(1);
    for step in 0..decisions {
        let i = mix.draw(&mut rng, keys.len());
        let from = step.is_multiple_of(RCPTS_PER_MAIL).then(|| sender_for(i));
        match l.check(&keys[i], Some(client_for(i)), from) {
            Decision::Accept(r) | Decision::Observed(r, _) => {
                out.accepted += 1;
                if out.accepted.is_multiple_of(RELEASE_EVERY as u64) {
                    l.release(r);
                } else {
                    l.commit(r);
                }
            }
            Decision::Refuse(Refusal::OverLimit(_)) => out.over_limit += 1,
            Decision::Refuse(Refusal::Locked(_)) => out.locked += 1,
        }
        if step % tick == tick - 1 {
            clock.fetch_add(1, Relaxed);
        }
        if step % DRAIN_EVERY == DRAIN_EVERY - 1 {
            drop(l.drain_journal());
        }
    }
    out
}

/// Untimed: commits recipients for each over-limit key until it is refused,
/// so that it is full at the current time.
fn top_up(l: &Limiter, keys: &[SenderKey], over: &[usize]) {
    for &i in over {
        while let Decision::Accept(r) = l.check(&keys[i], Some(client_for(i)), None) {
            l.commit(r);
        }
    }
    drop(l.drain_journal());
}

/// One refusal round: `check` only, round robin over the over-limit keys.
fn refusals(l: &Limiter, keys: &[SenderKey], over: &[usize], checks: usize) -> Outcomes {
    let mut out = Outcomes::default();
    for (step, &i) in over.iter().cycle().take(checks).enumerate() {
        match l.check(&keys[i], Some(client_for(i)), None) {
            Decision::Accept(r) | Decision::Observed(r, _) => {
                out.accepted += 1;
                l.release(r);
            }
            Decision::Refuse(Refusal::OverLimit(_)) => out.over_limit += 1,
            Decision::Refuse(Refusal::Locked(_)) => out.locked += 1,
        }
        if step % DRAIN_EVERY == DRAIN_EVERY - 1 {
            drop(l.drain_journal());
        }
    }
    out
}

/// Runs `work(thread)` on `threads` threads started together; returns the
/// wall time in seconds and the outcomes of all threads.
fn timed(threads: usize, work: impl Fn(usize) -> Outcomes + Sync) -> (f64, Outcomes) {
    let start = Barrier::new(threads + 1);
    std::thread::scope(|s| {
        let handles: Vec<_> = (0..threads)
            .map(|t| {
                let (start, work) = (&start, &work);
                s.spawn(move || {
                    start.wait();
                    work(t)
                })
            })
            .collect();
        start.wait();
        let t0 = Instant::now();
        let mut out = Outcomes::default();
        for h in handles {
            out.add(h.join().expect("benchmark thread panicked"));
        }
        (t0.elapsed().as_secs_f64(), out)
    })
}

// === Reporting ===

/// Medians and extremes of one workload's rounds.
#[derive(Debug, Default)]
struct Series {
    name: String,
    per_sec: Vec<f64>,
    outcomes: Outcomes,
}

impl Series {
    fn new(name: impl Into<String>) -> Self {
        Series {
            name: name.into(),
            ..Series::default()
        }
    }

    fn push(&mut self, count: usize, (secs, out): (f64, Outcomes)) {
        self.per_sec.push(count as f64 / secs);
        self.outcomes.add(out);
    }

    fn sorted(&self) -> Vec<f64> {
        let mut v = self.per_sec.clone();
        v.sort_by(f64::total_cmp);
        v
    }

    fn median(&self) -> f64 {
        median(&self.per_sec)
    }

    fn range(&self) -> String {
        let v = self.sorted();
        format!("{} – {}", rate(v[0]), rate(v[v.len() - 1]))
    }
}

fn median(values: &[f64]) -> f64 {
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// `2.41 M`, `812 k`.
fn rate(per_sec: f64) -> String {
    if per_sec >= 1e6 {
        format!("{:.2} M", per_sec / 1e6)
    } else {
        format!("{:.0} k", per_sec / 1e3)
    }
}

/// `1,000,000`.
fn grouped(n: usize) -> String {
    let digits = n.to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// The process's resident set, in bytes (`VmRSS` of /proc/self/status).
fn rss_bytes() -> usize {
    let status = std::fs::read_to_string("/proc/self/status").expect("read /proc/self/status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<usize>().ok())
        .expect("VmRSS in /proc/self/status")
        * 1024
}

fn cpu_model() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("model name"))
                .map(|v| v.trim_start_matches([' ', '\t', ':']).trim().to_string())
        })
        .unwrap_or_else(|| "unknown CPU".into())
}

fn main() {
    // `cargo bench` passes `--bench`; without it (`cargo test --benches`),
    // run small, as for `--quick`.
    let (mut quick, mut bench) = (false, false);
    for arg in std::env::args().skip(1) {
        match arg.as_str() {
            "--quick" => quick = true,
            "--bench" => bench = true,
            other => {
                eprintln!("usage: limits [--quick]   (unknown argument {other:?})");
                std::process::exit(2);
            }
        }
    }
    let sizes = if quick || !bench { QUICK } else { FULL };
    let command = if sizes.keys == QUICK.keys {
        "cargo bench --bench limits -- --quick"
    } else {
        "cargo bench --bench limits"
    };
    let nproc = std::thread::available_parallelism().map_or(1, |n| n.get());
    let machine = format!("{}, nproc {nproc}", cpu_model());
    println!("`{command}` on {machine}");

    let time = Arc::new(AtomicU32::new(T0 - FILL_SPAN));
    let cfg = LimitsConfig::default();
    let limiter = Limiter::new(Policy::new(&cfg), Box::new(BenchClock(time.clone())));

    // Fill, and what it cost.
    let mut keys = Vec::with_capacity(sizes.keys);
    let keys_vec_bytes = keys.capacity() * std::mem::size_of::<SenderKey>();
    let rss_before = rss_bytes();
    let started = Instant::now();
    fill(&limiter, &time, &mut keys, sizes.keys);
    let fill_secs = started.elapsed().as_secs_f64();
    let rss_after = rss_bytes();
    assert_eq!(limiter.len(), sizes.keys, "every key resident");
    let recipients: usize = (0..sizes.keys).map(recipients_for).sum();
    let rss_per_key = (rss_after - rss_before).saturating_sub(keys_vec_bytes) / sizes.keys;
    let engine_per_key = limiter.bytes_per_key();
    println!(
        "filled {} keys ({} recipients committed) in {fill_secs:.2} s",
        grouped(sizes.keys),
        grouped(recipients)
    );
    println!(
        "resident bytes per key: {rss_per_key} by RSS ({} MB before, {} MB after, less the \
         benchmark's own {} MB key list); {engine_per_key} by the engine's estimate",
        rss_before >> 20,
        rss_after >> 20,
        keys_vec_bytes >> 20
    );

    let over: Vec<usize> = (0..sizes.keys).filter(|&i| is_over_limit(i)).collect();
    let checks = over.len() * REFUSALS_PER_KEY;
    let mut series = [
        Series::new(format!("decisions/s, 1 thread, {}", Mix::Uniform.name())),
        Series::new(format!("decisions/s, 1 thread, {}", Mix::Hot.name())),
        Series::new("refusals/s, 1 thread, `check` only, over the limit"),
        Series::new(format!("decisions/s, 2 threads, {}", Mix::Uniform.name())),
        Series::new(format!("decisions/s, 2 threads, {}", Mix::Hot.name())),
    ];
    let (mut ratio_uniform, mut ratio_hot) = (Vec::new(), Vec::new());
    println!(
        "{} rounds of {} decisions per traffic workload, {} checks per refusal round",
        sizes.rounds,
        grouped(sizes.decisions),
        grouped(checks)
    );
    let started = Instant::now();
    for round in 0..sizes.rounds {
        let seed = round as u64 * 1000;
        let l = &limiter;
        let (clock, keys) = (&*time, &keys[..]);
        for (s, mix, threads) in [
            (0, Mix::Uniform, 1),
            (1, Mix::Hot, 1),
            (3, Mix::Uniform, 2),
            (4, Mix::Hot, 2),
        ] {
            let per_thread = sizes.decisions / threads;
            let run = timed(threads, |t| {
                traffic(l, clock, keys, mix, per_thread, seed + s * 10 + t as u64)
            });
            series[s as usize].push(per_thread * threads, run);
        }
        top_up(l, keys, &over);
        let run = timed(1, |_| refusals(l, keys, &over, checks));
        series[2].push(checks, run);
        ratio_uniform.push(series[3].per_sec[round] / series[0].per_sec[round]);
        ratio_hot.push(series[4].per_sec[round] / series[1].per_sec[round]);
        println!(
            "round {}: {}",
            round + 1,
            series
                .iter()
                .map(|s| rate(s.per_sec[round]))
                .collect::<Vec<_>>()
                .join(" | ")
        );
    }
    println!(
        "ran in {:.1} s; {} keys resident, RSS now {} MB",
        started.elapsed().as_secs_f64(),
        grouped(limiter.len()),
        rss_bytes() >> 20
    );
    for s in &series {
        println!("{}: {}", s.name, s.outcomes.describe());
    }

    // The table for the README.
    let ratios = [None, None, None, Some(&ratio_uniform), Some(&ratio_hot)];
    println!();
    println!(
        "| Limiter, {} keys resident, default policy (12/1h, rotation 20/1h) | median | slowest – fastest round |",
        grouped(sizes.keys)
    );
    println!("|---|--:|--:|");
    for (s, ratio) in series.iter().zip(ratios) {
        let vs = ratio.map_or(String::new(), |r| {
            format!(" (×{:.2} one thread)", median(r))
        });
        println!("| {} | {}{vs} | {} |", s.name, rate(s.median()), s.range());
    }
    println!("| resident bytes per key, process RSS | {rss_per_key} | |");
    println!("| bytes per key, engine's estimate | {engine_per_key} | |");
    println!();
    println!(
        "`{command}` on {machine}: {} rounds × {} decisions; a decision is `check` then \
         `commit` (1 accepted in {RELEASE_EVERY} `release`d), medians of side-by-side rounds.",
        sizes.rounds,
        grouped(sizes.decisions)
    );
}
