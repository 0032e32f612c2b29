//! Measuring one burst: the watch that stamps when each identity appears and turns Ready, the
//! timing statistics, and the issuance measurement itself.

use super::*;

/// What the watch saw, stamped with the local time the event arrived.
pub(crate) enum Seen {
    Synced,
    First(String, Instant),
    Ready(String, Instant),
}

/// Watches every `MtlsIdentity` and reports, once per object, when it first appears and when it
/// is first Ready.
pub(crate) fn spawn_watch(client: &Client) -> tokio::sync::mpsc::UnboundedReceiver<Seen> {
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    let api: Api<MtlsIdentity> = Api::all(client.clone());
    tokio::spawn(async move {
        let mut stream = watcher(api, watcher::Config::default()).default_backoff().boxed();
        let (mut seen, mut ready) = (HashSet::new(), HashSet::new());
        let mut synced = false;
        while let Some(event) = stream.next().await {
            let now = Instant::now();
            let obj = match event {
                Ok(watcher::Event::Apply(o) | watcher::Event::InitApply(o)) => o,
                Ok(watcher::Event::InitDone) => {
                    if !synced {
                        synced = true;
                        let _ = tx.send(Seen::Synced);
                    }
                    continue;
                }
                Ok(_) => continue,
                Err(e) => {
                    eprintln!("watch error (retrying): {e}");
                    continue;
                }
            };
            let key = format!("{}/{}", obj.namespace().unwrap_or_default(), obj.name_any());
            if seen.insert(key.clone()) && tx.send(Seen::First(key.clone(), now)).is_err() {
                return;
            }
            if is_ready(&obj) && ready.insert(key.clone()) && tx.send(Seen::Ready(key, now)).is_err() {
                return;
            }
        }
    });
    rx
}

pub(crate) fn identity_name(i: usize) -> String {
    format!("id-{i}")
}

pub(crate) fn namespace_name(i: usize) -> String {
    format!("{NAMESPACE_PREFIX}-{i}")
}

#[derive(Clone, Copy, Default)]
pub(crate) struct Timing {
    pub(crate) create_start: Option<Instant>,
    pub(crate) create_done: Option<Instant>,
    pub(crate) first_seen: Option<Instant>,
    pub(crate) ready: Option<Instant>,
}

/// Nearest-rank percentile of sorted durations.
pub(crate) fn percentile(sorted: &[Duration], q: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let rank = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1]
}

pub(crate) fn ms(d: Duration) -> String {
    if d >= Duration::from_secs(1) { format!("{:.2} s", d.as_secs_f64()) } else { format!("{} ms", d.as_millis()) }
}

pub(crate) fn distribution(mut ds: Vec<Duration>) -> String {
    ds.sort();
    format!(
        "p50 {}  p90 {}  p99 {}  max {}",
        ms(percentile(&ds, 0.50)),
        ms(percentile(&ds, 0.90)),
        ms(percentile(&ds, 0.99)),
        ms(ds.last().copied().unwrap_or_default())
    )
}

pub(crate) struct Issuance {
    pub(crate) timings: Vec<Timing>,
    pub(crate) api: ApiDelta,
    /// CPU of everything but the control plane, operator and benchmark, % of one core.
    pub(crate) others: f64,
    /// Authority and namespaces, before the first create.
    pub(crate) setup: Vec<PhaseUse>,
    pub(crate) phase: PhaseUse,
}

pub(crate) struct Idle {
    pub(crate) window: Duration,
    pub(crate) phase: PhaseUse,
    pub(crate) api: ApiDelta,
    pub(crate) reconciles: f64,
    /// The same window with the operator stopped: what the control plane does by itself.
    pub(crate) baseline: Option<ApiDelta>,
}

pub(crate) async fn measure(
    client: &Client,
    args: &Args,
    machine: &Machine,
    operator: &Operator,
) -> anyhow::Result<Issuance> {
    let (n, m, c) = (args.identities, args.namespaces.min(args.identities), args.concurrency);
    let setup = PhaseStart::begin(&operator.sampler, "set-up");

    // The authority: a generated CA, its trust bundle published to the benchmark's namespaces.
    let authorities: Api<MtlsAuthority> = Api::all(client.clone());
    let auth: MtlsAuthority = serde_json::from_value(serde_json::json!({
        "metadata": {"name": args.authority},
        "spec": {
            "rotation": {"propagationDelay": args.propagation_delay, "reissueRate": args.reissue_rate},
            "trustBundle": {"configMapName": BUNDLE_CONFIGMAP, "namespaceSelector": {"matchLabels": {BENCH_LABEL: "true"}}},
        },
    }))?;
    let started = Instant::now();
    match authorities.create(&PostParams::default(), &auth).await {
        Ok(_) => {}
        Err(kube::Error::Api(e)) if e.code == 409 => {
            println!("authority {} already exists; reusing it", args.authority)
        }
        Err(e) => return Err(e).context("creating the MtlsAuthority"),
    }
    let create_call = started.elapsed();
    wait_for(Duration::from_secs(60), || {
        let authorities = authorities.clone();
        async move {
            let a = authorities.get(&args.authority).await.ok()?;
            a.status?.conditions.iter().any(|c| c.type_ == "Ready" && c.status == "True").then_some(())
        }
    })
    .await
    .ok_or_else(|| anyhow!("MtlsAuthority {} did not become Ready within 60 s", args.authority))?;
    println!(
        "authority {}: Ready {} after its create call (which took {})",
        args.authority,
        ms(started.elapsed() - create_call),
        ms(create_call)
    );

    // The namespaces, given a moment to reach the operator's namespace cache.
    let nsapi: Api<Namespace> = Api::all(client.clone());
    for j in 0..m {
        let ns = namespace_object(&namespace_name(j), serde_json::json!({BENCH_LABEL: "true"}));
        nsapi.create(&PostParams::default(), &ns).await.with_context(|| format!("creating {}", namespace_name(j)))?;
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    // The trust bundle reaches every namespace before the clock starts.
    let configmaps: Api<k8s_openapi::api::core::v1::ConfigMap> = Api::all(client.clone());
    let published = wait_for(Duration::from_secs(120), || {
        let configmaps = configmaps.clone();
        let lp = ListParams::default().fields(&format!("metadata.name={BUNDLE_CONFIGMAP}"));
        async move {
            let list = configmaps.list_metadata(&lp).await.ok()?;
            let count =
                list.items.iter().filter(|c| c.namespace().is_some_and(|ns| ns.starts_with(NAMESPACE_PREFIX))).count();
            (count >= m).then_some(())
        }
    })
    .await;
    if published.is_none() {
        eprintln!("warning: the trust bundle did not reach all {m} namespaces within 120 s");
    }

    // The watch, established before the first create.
    let mut events = spawn_watch(client);
    loop {
        match tokio::time::timeout(Duration::from_secs(30), events.recv()).await {
            Ok(Some(Seen::Synced)) => break,
            Ok(Some(_)) => {}
            Ok(None) | Err(_) => bail!("the MtlsIdentity watch did not sync within 30 s"),
        }
    }
    let before = operator.metrics().await?;
    let procs = watched_processes(operator.pid);
    let api_before = ApiRequests::scrape(client).await;
    let cpu_before = CpuSample::take(&procs);
    let setup = setup.finish(&operator.sampler);
    let phase = PhaseStart::begin(&operator.sampler, "issuance");

    println!();
    let pace = args.rate.map(|r| format!(", paced at {r}/s")).unwrap_or_default();
    println!("creating {n} identities in {m} namespaces, {c} creates in flight{pace} ...");
    let index: HashMap<String, usize> =
        (0..n).map(|i| (format!("{}/{}", namespace_name(i % m), identity_name(i)), i)).collect();
    let mut timings = vec![Timing::default(); n];
    let created = Arc::new(AtomicUsize::new(0));
    let apis: Vec<Api<MtlsIdentity>> = (0..m).map(|j| Api::namespaced(client.clone(), &namespace_name(j))).collect();
    let authority = args.authority.clone();
    let counter = created.clone();
    let rate = args.rate;
    let mut creates = tokio::spawn(async move {
        let paced_from = tokio::time::Instant::now();
        futures::stream::iter(0..n)
            .map(|i| {
                let api = apis[i % m].clone();
                let obj: MtlsIdentity = serde_json::from_value(serde_json::json!({
                    "metadata": {"name": identity_name(i)},
                    "spec": {"authorityRef": authority, "serviceNames": [format!("svc-{i}")]},
                }))
                .expect("a valid MtlsIdentity");
                let counter = counter.clone();
                async move {
                    if let Some(rate) = rate {
                        tokio::time::sleep_until(paced_from + Duration::from_secs_f64(i as f64 / rate)).await;
                    }
                    let start = Instant::now();
                    let r = api.create(&PostParams::default(), &obj).await.map(|_| ());
                    let done = Instant::now();
                    counter.fetch_add(1, Ordering::Relaxed);
                    (i, start, done, r)
                }
            })
            .buffer_unordered(c)
            .collect::<Vec<_>>()
            .await
    });

    let deadline = tokio::time::Instant::now() + args.timeout;
    let mut progress = tokio::time::interval(Duration::from_secs(1));
    progress.tick().await;
    let t0 = Instant::now();
    let (mut ready, mut creates_done) = (0usize, false);
    while !(creates_done && ready == n) {
        tokio::select! {
            seen = events.recv() => match seen {
                Some(Seen::First(key, at)) => if let Some(&i) = index.get(&key) {
                    timings[i].first_seen = Some(at);
                },
                Some(Seen::Ready(key, at)) => if let Some(&i) = index.get(&key) {
                    timings[i].ready = Some(at);
                    ready += 1;
                },
                Some(Seen::Synced) => {}
                None => bail!("the MtlsIdentity watch ended"),
            },
            results = &mut creates, if !creates_done => {
                creates_done = true;
                let mut failed = vec![];
                for (i, start, done, r) in results.context("the create task panicked")? {
                    timings[i].create_start = Some(start);
                    timings[i].create_done = Some(done);
                    if let Err(e) = r {
                        failed.push(format!("{}: {e}", identity_name(i)));
                    }
                }
                if !failed.is_empty() {
                    bail!("{} of {n} creates failed, e.g. {}", failed.len(), failed[0]);
                }
            },
            _ = progress.tick() => {
                eprintln!(
                    "  {:>5.1} s: {:>5} created, {:>5} Ready",
                    t0.elapsed().as_secs_f64(),
                    created.load(Ordering::Relaxed),
                    ready
                );
            },
            _ = tokio::time::sleep_until(deadline) => {
                let not_ready = describe_not_ready(client, m).await;
                bail!(
                    "only {ready} of {n} identities were Ready after {} s ({} created); not Ready: {not_ready}",
                    args.timeout.as_secs(),
                    created.load(Ordering::Relaxed)
                );
            },
        }
    }
    let cpu_after = CpuSample::take(&procs);
    let cpu = cpu_after.describe_since(&cpu_before);
    let others = cpu_after.others_since(&cpu_before);

    // Let anything that would happen after Ready (a second issuance, say) happen before counting.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let api = match (api_before, ApiRequests::scrape(client).await) {
        (Some(a), Some(b)) => b.since(&a),
        _ => ApiDelta::default(),
    };
    let phase = phase.finish(&operator.sampler);
    let after = operator.metrics().await?;
    report(args, machine, &timings, &after.since(&before));
    match write_timings(&timings, m) {
        Ok(path) => println!("per-identity timings: {}", path.display()),
        Err(e) => eprintln!("could not write the per-identity timings: {e}"),
    }
    let noisy = if others > NOISY_OTHERS {
        format!("  NOISY: other processes used {others:.0}% of one core")
    } else {
        String::new()
    };
    println!("CPU (run):        {cpu}{noisy}");
    println!(
        "operator process: {:.2} CPU s ({:.2} ms per identity), peak RSS {:.1} MiB (VmHWM so far {:.1} MiB)",
        phase.cpu_s,
        1000.0 * phase.cpu_s / n as f64,
        mib(phase.peak_rss_kib),
        mib(phase.hwm_kib)
    );
    println!("API server requests during the run and 2 s after (not WATCH), busiest first:");
    for line in api.busiest(10) {
        println!("  {line}");
    }
    let by_verb: Vec<(String, f64)> = api.operator_by_verb().into_iter().collect();
    println!("API requests per identity by the operator, by verb: {}", describe_per_identity(&by_verb, n));
    let (writes, by_kind) = api.operator_writes();
    println!("writes per issuance: {} ({})", per(writes, n), describe_per_identity(&by_kind, n));
    Ok(Issuance { timings, api, others, setup: vec![setup], phase })
}
