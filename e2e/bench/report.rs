//! What the benchmark prints: the per-run report, the operator log's warnings, the summary with
//! its verdicts, and the chart data.

use super::*;

/// Writes one CSV line per identity (milliseconds since the first create) for closer analysis.
pub(crate) fn write_timings(timings: &[Timing], namespaces: usize) -> std::io::Result<PathBuf> {
    let dir = repo_root().join("target/bench-logs");
    std::fs::create_dir_all(&dir)?;
    let path = dir.join(format!("timings-{}.csv", jiff::Timestamp::now().strftime("%Y%m%dT%H%M%SZ")));
    let t0 = timings.iter().filter_map(|t| t.create_start).min().unwrap_or_else(Instant::now);
    let at = |t: Option<Instant>| t.map(|t| format!("{:.1}", (t - t0).as_secs_f64() * 1000.0)).unwrap_or_default();
    let mut out = String::from("namespace,name,create_start_ms,create_done_ms,first_seen_ms,ready_ms\n");
    for (i, t) in timings.iter().enumerate() {
        out.push_str(&format!(
            "{},{},{},{},{},{}\n",
            namespace_name(i % namespaces),
            identity_name(i),
            at(t.create_start),
            at(t.create_done),
            at(t.first_seen),
            at(t.ready)
        ));
    }
    std::fs::write(&path, out)?;
    Ok(path)
}

/// Counts the identities that are not Ready by their Ready reason.
pub(crate) async fn describe_not_ready(client: &Client, namespaces: usize) -> String {
    let mut reasons: BTreeMap<String, usize> = BTreeMap::new();
    for j in 0..namespaces {
        let api: Api<MtlsIdentity> = Api::namespaced(client.clone(), &namespace_name(j));
        match api.list(&ListParams::default()).await {
            Ok(list) => {
                for id in list.items.iter().filter(|i| !is_ready(i)) {
                    *reasons.entry(ready_reason(id)).or_default() += 1;
                }
            }
            Err(e) => return format!("(cannot list identities: {e})"),
        }
    }
    format!("{reasons:?}")
}

pub(crate) fn report(args: &Args, machine: &Machine, timings: &[Timing], ops: &Metrics) {
    let n = timings.len();
    let first_create = timings.iter().filter_map(|t| t.create_start).min().expect("at least one create");
    let last_create = timings.iter().filter_map(|t| t.create_done).max().expect("at least one create");
    let last_ready = timings.iter().filter_map(|t| t.ready).max().expect("at least one Ready");
    let wall = last_ready - first_create;
    let creates = last_create - first_create;
    let latency: Vec<Duration> = timings.iter().map(|t| t.ready.unwrap() - t.create_start.unwrap()).collect();
    let create_call: Vec<Duration> = timings.iter().map(|t| t.create_done.unwrap() - t.create_start.unwrap()).collect();
    let to_seen: Vec<Duration> =
        timings.iter().filter_map(|t| Some(t.first_seen?.saturating_duration_since(t.create_start.unwrap()))).collect();
    let seen_to_ready: Vec<Duration> =
        timings.iter().filter_map(|t| Some(t.ready.unwrap().saturating_duration_since(t.first_seen?))).collect();
    let throughput = n as f64 / wall.as_secs_f64();
    let mut sorted = latency.clone();
    sorted.sort();
    let p99 = percentile(&sorted, 0.99);

    println!();
    println!("=== mtls-operator issuance benchmark ===");
    println!(
        "machine:          {} cores, {}, {:.1} GiB RAM (load average at start: {})",
        machine.cores, machine.cpu, machine.memory_gib, machine.load
    );
    println!("operator source:  {}", source_state());
    let env: Vec<String> = ["MTLS_CONCURRENCY", "MTLS_ISSUANCE_RATE", "MTLS_ISSUANCE_BURST"]
        .iter()
        .filter_map(|k| std::env::var(k).ok().map(|v| format!("{k}={v}")))
        .collect();
    println!("operator flags:   {}", if env.is_empty() { "default settings".to_string() } else { env.join(" ") });
    println!(
        "workload:         {n} identities in {} namespaces, {} creates in flight, {}",
        args.namespaces.min(n),
        args.concurrency,
        args.rate.map(|r| format!("paced at {r} creates/s")).unwrap_or_else(|| "unpaced (one burst)".into())
    );
    println!(
        "creates:          {n} in {:.2} s ({:.0}/s); create call {}",
        creates.as_secs_f64(),
        n as f64 / creates.as_secs_f64(),
        distribution(create_call)
    );
    println!("total wall time:  {:.2} s (first create -> last Ready)", wall.as_secs_f64());
    let bounded = if args.rate.is_some() { " (bounded by the pacing)" } else { "" };
    println!("throughput:       {throughput:.1} identities/s{bounded}");
    println!("latency:          {}   (create call -> first watch event with Ready=True)", distribution(latency));
    println!("  create -> seen: {}   (object first seen by the watch)", distribution(to_seen));
    println!("  seen -> Ready:  {}", distribution(seen_to_ready));
    // Served in creation order? Median latency of each tenth of the identities, in creation order.
    let mut by_start: Vec<&Timing> = timings.iter().collect();
    by_start.sort_by_key(|t| t.create_start);
    let tenth = n.div_ceil(10);
    let deciles: Vec<String> = by_start
        .chunks(tenth)
        .map(|chunk| {
            let mut l: Vec<Duration> = chunk.iter().map(|t| t.ready.unwrap() - t.create_start.unwrap()).collect();
            l.sort();
            format!("{:.1}", percentile(&l, 0.5).as_secs_f64())
        })
        .collect();
    println!("  by creation order (median s per tenth, first to last): {}", deciles.join(" "));
    let issued = ops.total_issuances();
    let kinds: Vec<String> = ops.issuances.iter().map(|(k, v)| format!("{k} {v}")).collect();
    println!(
        "issuances:        {issued} (mtls_operator_issuances_total during the run: {}) {}",
        if kinds.is_empty() { "none".into() } else { kinds.join(", ") },
        if issued == n as f64 { "= N, OK".to_string() } else { format!("!= N = {n}: MISMATCH") }
    );
    if ops.issuance_seconds_count > 0.0 {
        println!(
            "operator:         {} reconciles, mean key+sign time {:.2} ms, reconcile errors: {}",
            ops.reconciles,
            1000.0 * ops.issuance_seconds_sum / ops.issuance_seconds_count,
            if ops.errors.is_empty() { "none".into() } else { format!("{:?}", ops.errors) }
        );
    }
    let verdict = |ok: bool| if ok { "met" } else { "MISSED" };
    println!(
        "targets:          p99 < 1 s: {} ({}); throughput >= 100/s: {} ({throughput:.1}/s)",
        verdict(p99 < Duration::from_secs(1)),
        ms(p99),
        verdict(throughput >= 100.0)
    );
}

/// Prints how many warnings and errors the operator logged, with a few distinct examples.
pub(crate) fn report_operator_log(log: &Path) {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let problems: Vec<&str> = text.lines().filter(|l| l.contains(" WARN ") || l.contains(" ERROR ")).collect();
    println!("operator log:     {} ({} warning/error lines)", log.display(), problems.len());
    let mut shown = HashSet::new();
    for line in problems {
        // Group by the message, not by the identity or the timestamp.
        let message: String =
            line.split_whitespace().skip(2).filter(|w| !w.contains('=')).collect::<Vec<_>>().join(" ");
        if shown.insert(message) && shown.len() <= 5 {
            println!("  {line}");
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Diagnostics: where the time went
// ---------------------------------------------------------------------------------------------

pub(crate) fn verdict(ok: bool) -> &'static str {
    if ok { "met" } else { "MISSED" }
}

/// Idle counts as "near zero" below this share of one core, with no LIST by the operator and at
/// most one request per 10 s.
pub(crate) const IDLE_CPU_TARGET_PCT: f64 = 1.0;

pub(crate) fn summary(
    args: &Args,
    machine: &Machine,
    unrelated: Option<&unrelated::Created>,
    o: &Outcome,
    ceiling: Option<&ceiling::Ceiling>,
    floor: Option<&[floor::Step]>,
) {
    let Some(iss) = &o.issuance else { return };
    let n = args.identities;
    let m = args.namespaces.min(n);
    let first = iss.timings.iter().filter_map(|t| t.create_start).min().expect("a create");
    let last = iss.timings.iter().filter_map(|t| t.ready).max().expect("a Ready");
    let wall = (last - first).as_secs_f64();
    let mut latency: Vec<Duration> = iss.timings.iter().map(|t| t.ready.unwrap() - t.create_start.unwrap()).collect();
    latency.sort();
    let p99 = percentile(&latency, 0.99);
    let hwm = o.phases.iter().map(|p| p.hwm_kib).max().unwrap_or(0);
    let noisy = iss.others > NOISY_OTHERS;

    println!();
    println!("=== scale summary ===");
    println!(
        "machine:          {} cores, {}, {:.1} GiB RAM; load average at start {}, at end {}{}",
        machine.cores,
        machine.cpu,
        machine.memory_gib,
        machine.load,
        Machine::read().load,
        if noisy {
            format!("; NOISY (others used {:.0}% of one core during issuance)", iss.others)
        } else {
            String::new()
        }
    );
    println!("operator source:  {}", source_state());
    println!(
        "workload:         {n} identities in {m} namespaces, {} creates in flight; {} unrelated Secrets in {} namespaces{}",
        args.concurrency,
        if unrelated.is_some() { args.unrelated_secrets } else { 0 },
        if unrelated.is_some() { args.unrelated_namespaces } else { 0 },
        unrelated.map(|u| if u.created == 0 { " (reused)" } else { "" }).unwrap_or("")
    );
    println!("all Ready:        {wall:.2} s from the first create ({:.1} identities/s)", n as f64 / wall);
    let ratio = ceiling.map(|c| wall / c.wall.as_secs_f64());
    if let (Some(c), Some(r)) = (ceiling, ratio) {
        println!(
            "ceiling:          {:.2} s for a plain client to create {n} Secrets of {} bytes, {} in flight ({:.0}/s)",
            c.wall.as_secs_f64(),
            c.bytes,
            args.concurrency,
            c.n as f64 / c.wall.as_secs_f64()
        );
        println!("ratio:            {r:.2} x the ceiling (operator time / ceiling time)");
    }
    if let Some(steps) = floor {
        println!(
            "contract floor:   a plain client making the requests of {n} issuances, {} in flight:",
            args.floor_concurrency()
        );
        for s in steps {
            let vs_ceiling =
                ceiling.map(|c| format!(", {:.2} x the ceiling", s.wall.as_secs_f64() / c.wall.as_secs_f64()));
            println!(
                "  {:<22} {:>7.2} s ({:.0}/s{})",
                floor::STEPS[s.requests - 1],
                s.wall.as_secs_f64(),
                n as f64 / s.wall.as_secs_f64(),
                vs_ceiling.unwrap_or_default()
            );
        }
        if let Some(all) = steps.last() {
            println!(
                "  operator:              {wall:>7.2} s = {:.2} x the floor (all an issuance needs)",
                wall / all.wall.as_secs_f64()
            );
        }
    }
    println!("latency:          {}", distribution(latency.clone()));
    let phase_list = |f: &dyn Fn(&PhaseUse) -> String| o.phases.iter().map(f).collect::<Vec<_>>().join(", ");
    println!(
        "operator RSS:     peak (VmHWM) {:.1} MiB; peak VmRSS by phase: {}; VmRSS at the end of the last phase {:.1} MiB",
        mib(hwm),
        phase_list(&|p| format!("{} {:.1}", p.name, mib(p.peak_rss_kib))),
        o.phases.last().map(|p| mib(p.end_rss_kib)).unwrap_or(0.0)
    );
    println!("operator CPU:     {} (seconds by phase)", phase_list(&|p| format!("{} {:.2}", p.name, p.cpu_s)));
    let by_verb: Vec<(String, f64)> = iss.api.operator_by_verb().into_iter().collect();
    println!("API per identity: {} (operator's requests during issuance, by verb)", describe_per_identity(&by_verb, n));
    let (writes, by_kind) = iss.api.operator_writes();
    let writes_per = writes / n as f64;
    println!("writes/issuance:  {writes_per:.2} ({})", describe_per_identity(&by_kind, n));
    let idle_ok = o.idle.as_ref().map(|i| {
        let pct = 100.0 * i.phase.cpu_s / i.window.as_secs_f64();
        let requests = match &i.baseline {
            Some(b) => i.api.operator_minus(b),
            None => i.api.operator(),
        };
        let total = requests.values().fold(0.0, |a, b| a + b);
        let lists = requests.iter().filter(|((v, _), _)| v == "LIST").fold(0.0, |a, (_, c)| a + c);
        println!(
            "idle:             {:.2} CPU s in {:.0} s ({pct:.2}% of one core), {} reconciles; API requests {}: {total}{}",
            i.phase.cpu_s,
            i.window.as_secs_f64(),
            i.reconciles,
            if i.baseline.is_some() {
                "beyond the control plane's own (the same window with the operator stopped)"
            } else {
                "on the operator's resources"
            },
            if requests.is_empty() {
                String::new()
            } else {
                format!(" ({})", requests.iter().map(|((v, r), n)| format!("{v} {r} {n}")).collect::<Vec<_>>().join(", "))
            }
        );
        (pct, pct < IDLE_CPU_TARGET_PCT && lists == 0.0 && total <= i.window.as_secs_f64() / 10.0)
    });
    if let Some((r, api)) = &o.rotation {
        let (w, by_kind) = api.operator_writes();
        println!(
            "rotation:         {:.1} s trigger -> Stable ({}); {} writes per identity ({})",
            r.took.as_secs_f64(),
            r.phases.iter().map(|(p, t)| format!("{p} {t:.1}")).collect::<Vec<_>>().join(", "),
            per(w, n),
            describe_per_identity(&by_kind, n)
        );
    }
    println!("targets (stated for: ratio and RSS at 10,000 identities with 50,000 unrelated Secrets; p99 at 1,000):");
    if let Some(r) = ratio {
        println!("  Ready within 2x the ceiling:       {} ({r:.2}x)", verdict(r <= 2.0));
    } else {
        println!("  Ready within 2x the ceiling:       not measured (--ceiling)");
    }
    println!("  p99 create -> Ready under 1 s:     {} ({})", verdict(p99 < Duration::from_secs(1)), ms(p99));
    println!("  operator peak RSS under 64 MiB:    {} ({:.1} MiB)", verdict(hwm < 64 * 1024), mib(hwm));
    match idle_ok {
        Some((pct, ok)) => println!("  idle CPU near zero:                {} ({pct:.2}% of one core)", verdict(ok)),
        None => println!("  idle CPU near zero:                not measured (--idle SECONDS)"),
    }
    println!("  at most 3 API writes per issuance: {} ({writes_per:.2})", verdict(writes_per <= 3.0));
}

pub(crate) fn chart_data(
    args: &Args,
    o: &Outcome,
    iss: &Issuance,
    ceiling: Option<&ceiling::Ceiling>,
    floor: Option<&[floor::Step]>,
    samples: &[(Instant, procstat::ProcStat)],
    started: Instant,
) -> chart::ChartData {
    let first = iss.timings.iter().filter_map(|t| t.create_start).min().expect("a create");
    let mut identities: Vec<(f64, f64)> = iss
        .timings
        .iter()
        .map(|t| ((t.create_start.unwrap() - first).as_secs_f64(), (t.ready.unwrap() - first).as_secs_f64()))
        .collect();
    identities.sort_by(|a, b| a.0.total_cmp(&b.0));
    let wall = identities.iter().map(|i| i.1).fold(0.0, f64::max);
    let mut lat: Vec<f64> = identities.iter().map(|(c, r)| r - c).collect();
    lat.sort_by(f64::total_cmp);
    let q = |q: f64| lat[((q * lat.len() as f64).ceil() as usize).clamp(1, lat.len()) - 1];
    // CPU % over about a second between samples, RSS as sampled.
    let mut operator = vec![];
    let mut j = 0;
    for (i, (at, p)) in samples.iter().enumerate() {
        while j < i && (*at - samples[j].0) > Duration::from_millis(1000) {
            j += 1;
        }
        let (t0, p0) = samples[j.min(i)];
        let dt = (*at - t0).as_secs_f64();
        let cpu = if dt > 0.0 { 100.0 * (p.cpu_s - p0.cpu_s) / dt } else { 0.0 };
        operator.push(((*at - started).as_secs_f64(), mib(p.rss_kib), cpu));
    }
    let hwm = o.phases.iter().map(|p| p.hwm_kib).max().unwrap_or(0);
    let ratio = ceiling
        .map(|c| format!(" = {:.2}x the ceiling ({:.1} s)", wall / c.wall.as_secs_f64(), c.wall.as_secs_f64()))
        .unwrap_or_default();
    let vs_floor = floor
        .and_then(|steps| steps.last())
        .map(|f| format!(", {:.2}x the contract floor ({:.1} s)", wall / f.wall.as_secs_f64(), f.wall.as_secs_f64()))
        .unwrap_or_default();
    let ratio = ratio + &vs_floor;
    let machine = Machine::read();
    chart::ChartData {
        title: format!("mtls-operator: {} identities Ready in {wall:.1} s{ratio}", identities.len()),
        subtitle: format!(
            "{} namespaces, {} creates in flight, {} unrelated Secrets; latency p50 {:.2} s, p99 {:.2} s; operator peak RSS {:.1} MiB",
            args.namespaces.min(args.identities),
            args.concurrency,
            if args.unrelated_secrets > 0 { args.unrelated_secrets } else { 0 },
            q(0.5),
            q(0.99),
            mib(hwm),
        ),
        machine: format!(
            "{} cores ({}), load average {} at the end{}; operator {}",
            machine.cores,
            machine.cpu,
            machine.load,
            if iss.others > NOISY_OTHERS {
                format!("; NOISY: others used {:.0}% of one core", iss.others)
            } else {
                String::new()
            },
            source_state()
        ),
        identities,
        ceiling_done_s: ceiling.map(|c| c.done_s.clone()),
        floor_done_s: floor.and_then(|steps| steps.last()).map(|s| s.done_s.clone()),
        operator,
        phases: o
            .phases
            .iter()
            .map(|p| (p.name.clone(), (p.start - started).as_secs_f64(), (p.end.max(p.start) - started).as_secs_f64()))
            .collect(),
    }
}
