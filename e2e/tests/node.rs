//! On the real node (`e2e/node.sh up`): workloads in pods (the `mtls-probe` image, e2e/probe)
//! mount the Secrets and bundle ConfigMaps the operator writes as whole volumes, kubelet delivers
//! every change with its real projection, and the workloads reload the files and handshake with
//! each other continuously, checking SPIFFE IDs. What the rotation tests show with an emulated
//! kubelet is shown here with the real one:
//!
//! - kubelet's propagation delay, measured (`kubelet_delivers_a_changed_secret_within_the_propagation_delay`);
//! - a full rotation, then a rotation rolled back half-way, fail no handshake;
//! - the control: a `propagationDelay` shorter than kubelet's real delay makes handshakes fail.
//!
//! The rotations wait `propagationDelay` in each phase. It is chosen from the node's own kubelet
//! (`syncFrequency`, read from its `/configz`): upstream's default (1m) gets the operator's
//! default `propagationDelay` (3m), so that a run against a default kubelet checks the default;
//! the suite lowers `syncFrequency` to 10s (e2e/test.sh) and uses 3 × syncFrequency (measured
//! here with the suite running: 7.7–14.9 s for 10s).
//!
//! Needs a Ready node with the probe image imported: e2e/test.sh does both; by hand,
//! `e2e/node.sh up && e2e/image.sh import`. Without them every test fails, saying so.

#[path = "harness.rs"]
#[allow(dead_code)]
mod harness;

#[path = "fixtures.rs"]
#[allow(dead_code)]
mod fixtures;

use std::{collections::BTreeMap, time::Duration};

use k8s_openapi::api::core::v1::{Node, Pod, Secret};
use kube::{
    Api, Client, ResourceExt,
    api::{ListParams, LogParams, PostParams},
};

use fixtures::{
    TestAuthority, create_identity, get_secret, patch_rotation, stable_at, wait_authority_ready, wait_identity_ready,
    watch_phases,
};
use harness::TestNamespace;

const PROBE_IMAGE: &str = concat!("localhost/mtls-probe:", env!("CARGO_PKG_VERSION"));

/// The node's name and its kubelet's `syncFrequency`; panics (with what to do) when there is no
/// Ready node. (A missing probe image shows when the first pod cannot start: see [`run_pods`].)
async fn node(client: &Client) -> (String, Duration) {
    let nodes = Api::<Node>::all(client.clone()).list(&ListParams::default()).await.expect("list nodes");
    let ready = nodes.items.iter().find(|n| {
        n.status
            .as_ref()
            .and_then(|s| s.conditions.as_ref())
            .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
    });
    let Some(ready) = ready else {
        panic!(
            "no Ready node: these tests run pods on a real kubelet. Start one with `e2e/node.sh up` (e2e/test.sh does)"
        )
    };
    let name = ready.name_any();
    let req = http::Request::get(format!("/api/v1/nodes/{name}/proxy/configz")).body(vec![]).unwrap();
    let configz: serde_json::Value =
        serde_json::from_str(&client.request_text(req).await.expect("kubelet /configz")).unwrap();
    let sync = configz["kubeletconfig"]["syncFrequency"].as_str().expect("syncFrequency in /configz");
    (name, mtls_operator::core::duration::parse(sync).expect("a Go duration"))
}

/// The `propagationDelay` the rotations use against a kubelet syncing every `sync`.
fn propagation_for(sync: Duration) -> Duration {
    if sync >= Duration::from_secs(60) { Duration::from_secs(180) } else { sync * 3 }
}

fn go(d: Duration) -> String {
    format!("{}s", d.as_secs())
}

/// A probe pod running `args`, with volumes (name, source) mounted read-only at `/etc/<name>`:
/// whole volumes, never subPath, as the examples say.
fn probe_pod(name: &str, labels: serde_json::Value, args: &[&str], volumes: &[(&str, serde_json::Value)]) -> Pod {
    let mounts: Vec<_> = volumes
        .iter()
        .map(|(v, _)| serde_json::json!({"name": v, "mountPath": format!("/etc/{v}"), "readOnly": true}))
        .collect();
    let vols: Vec<_> = volumes
        .iter()
        .map(|(v, src)| {
            let mut vol = src.clone();
            vol["name"] = serde_json::json!(v);
            vol
        })
        .collect();
    serde_json::from_value(serde_json::json!({
        "metadata": {"name": name, "labels": labels},
        "spec": {
            "automountServiceAccountToken": false,
            "terminationGracePeriodSeconds": 1,
            "securityContext": {"runAsNonRoot": true, "runAsUser": 65532, "runAsGroup": 65532, "fsGroup": 65532,
                                "seccompProfile": {"type": "RuntimeDefault"}},
            "containers": [{
                "name": "probe", "image": PROBE_IMAGE, "imagePullPolicy": "Never", "args": args,
                "securityContext": {"readOnlyRootFilesystem": true, "allowPrivilegeEscalation": false,
                                    "capabilities": {"drop": ["ALL"]}},
                "resources": {"requests": {"cpu": "5m", "memory": "8Mi"}, "limits": {"memory": "64Mi"}},
                "volumeMounts": mounts
            }],
            "volumes": vols
        }
    }))
    .unwrap()
}

fn secret_volume(name: &str) -> serde_json::Value {
    serde_json::json!({"secret": {"secretName": name, "defaultMode": 0o440}})
}

fn configmap_volume(name: &str) -> serde_json::Value {
    serde_json::json!({"configMap": {"name": name}})
}

/// Creates the pods and waits until they all run; returns their IPs by name.
async fn run_pods(client: &Client, ns: &str, pods: Vec<Pod>) -> BTreeMap<String, String> {
    let api: Api<Pod> = Api::namespaced(client.clone(), ns);
    for p in &pods {
        api.create(&PostParams::default(), p).await.unwrap_or_else(|e| panic!("create pod {}: {e}", p.name_any()));
    }
    let names: Vec<String> = pods.iter().map(|p| p.name_any()).collect();
    let running = harness::wait_for(Duration::from_secs(90), || {
        let (api, names) = (api.clone(), names.clone());
        async move {
            let mut ips = BTreeMap::new();
            for n in &names {
                let p = api.get(n).await.ok()?;
                let st = p.status?;
                let waiting = st.container_statuses.iter().flatten().filter_map(|c| c.state.as_ref()?.waiting.as_ref());
                if let Some(w) = waiting.into_iter().find(|w| w.reason.as_deref() == Some("ErrImageNeverPull")) {
                    panic!("pod {ns}/{n}: {:?}: import the image with `e2e/image.sh import`", w.message);
                }
                (st.phase.as_deref() == Some("Running")).then_some(())?;
                ips.insert(n.clone(), st.pod_ip?);
            }
            Some(ips)
        }
    })
    .await;
    match running {
        Some(ips) => ips,
        None => {
            let mut states = vec![];
            for n in &names {
                let p = api.get(n).await.ok();
                states.push(format!("{n}: {:?}", p.and_then(|p| p.status).map(|s| (s.phase, s.container_statuses))));
            }
            panic!("pods did not start in {ns}: {states:#?}")
        }
    }
}

/// A probe's log as its JSON events.
async fn events(client: &Client, ns: &str, pod: &str) -> Vec<serde_json::Value> {
    let log = Api::<Pod>::namespaced(client.clone(), ns)
        .logs(pod, &LogParams::default())
        .await
        .unwrap_or_else(|e| panic!("logs of {ns}/{pod}: {e}"));
    log.lines().filter_map(|l| serde_json::from_str(l).ok()).collect()
}

fn of_kind<'a>(events: &'a [serde_json::Value], kind: &'a str) -> impl Iterator<Item = &'a serde_json::Value> + 'a {
    events.iter().filter(move |e| e["event"] == kind)
}

/// What a serving or calling probe has counted so far: (ok, failed, the first failures).
async fn counts(client: &Client, ns: &str, pod: &str) -> (u64, u64, Vec<String>) {
    let ev = events(client, ns, pod).await;
    let last = of_kind(&ev, "report").last();
    let ok = last.and_then(|r| r["ok"].as_u64()).unwrap_or(0);
    let reported = last.and_then(|r| r["failed"].as_u64()).unwrap_or(0);
    let failures: Vec<&serde_json::Value> = of_kind(&ev, "failure").collect();
    let failed = failures.iter().filter_map(|f| f["n"].as_u64()).max().unwrap_or(0).max(reported);
    let errors = failures.iter().take(5).map(|f| f["error"].to_string()).collect();
    (ok, failed, errors)
}

#[tokio::test]
async fn kubelet_delivers_a_changed_secret_within_the_propagation_delay() {
    let client = harness::client().await;
    let (node, sync) = node(&client).await;
    let bound = propagation_for(sync);
    let ns = TestNamespace::new(&client, "delay").await;
    let secrets: Api<Secret> = Api::namespaced(client.clone(), &ns.name);
    let stamped = |at: f64| -> Secret {
        serde_json::from_value(serde_json::json!({
            "metadata": {"name": "watched"}, "stringData": {"sent-at": format!("{at:.3}")}
        }))
        .unwrap()
    };
    let epoch = || std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs_f64();
    secrets.create(&PostParams::default(), &stamped(epoch())).await.unwrap();
    let watchers: Vec<Pod> = (0..4)
        .map(|i| {
            probe_pod(
                &format!("watch-{i}"),
                serde_json::json!({}),
                &["watch", "/etc/watched"],
                &[("watched", secret_volume("watched"))],
            )
        })
        .collect();
    run_pods(&client, &ns.name, watchers).await;

    let mut delays = vec![];
    for _round in 0..3 {
        let sent = epoch();
        let mut s = stamped(sent);
        s.metadata.resource_version = secrets.get("watched").await.unwrap().resource_version();
        secrets.replace("watched", &PostParams::default(), &s).await.unwrap();
        let want = format!("{sent:.3}").parse::<f64>().unwrap();
        let seen = harness::wait_for(bound + Duration::from_secs(30), || {
            let client = client.clone();
            let ns = ns.name.clone();
            async move {
                let mut round = vec![];
                for i in 0..4 {
                    let ev = events(&client, &ns, &format!("watch-{i}")).await;
                    let hit = of_kind(&ev, "changed").find(|e| e["sent_at"].as_f64() == Some(want))?;
                    round.push(hit["delay_s"].as_f64()?);
                }
                Some(round)
            }
        })
        .await
        .unwrap_or_else(|| panic!("not every pod saw the Secret's update within {bound:?} + 30 s"));
        delays.extend(seen);
    }
    delays.sort_by(f64::total_cmp);
    let median = delays[delays.len() / 2];
    eprintln!(
        "kubelet propagation delay on node {node} (syncFrequency {sync:?}), Secret update -> new file in the pod, \
         {} samples: min {:.1} s, median {median:.1} s, max {:.1} s; all: {delays:.1?}; propagationDelay used: {bound:?}",
        delays.len(),
        delays[0],
        delays[delays.len() - 1],
    );
    assert!(
        delays[delays.len() - 1] < bound.as_secs_f64(),
        "kubelet took longer than the propagationDelay the rotations assume ({bound:?}): {delays:?}"
    );
}

/// Servers and clients in pods on two namespaces of one authority, each client calling a server of
/// the other namespace; half the clients trust their Secret's `ca.crt`, half the bundle ConfigMap.
struct Mesh {
    client: Client,
    auth: TestAuthority,
    _namespaces: Vec<TestNamespace>,
    /// (namespace, pod) of every probe: the servers, then the clients.
    probes: Vec<(String, String)>,
    propagation: Duration,
}

async fn mesh(prefix: &str, propagation: Duration, clients: usize) -> Mesh {
    harness::operator().await;
    let client = harness::client().await;
    node(&client).await;
    let name = format!("{prefix}-{:06x}", harness::rand_u32() & 0xffffff);
    let cm = format!("{name}-bundle");
    let auth = TestAuthority::create(
        &client,
        prefix,
        serde_json::json!({
            "rotation": {"propagationDelay": go(propagation), "reissueRate": 1},
            "trustBundle": {"configMapName": cm, "namespaceSelector": {"matchLabels": {"mtls-e2e/node": name}}}
        }),
    )
    .await;
    wait_authority_ready(&client, &auth.name).await;
    let mut namespaces = vec![];
    for _ in 0..2 {
        let ns = TestNamespace::new(&client, prefix).await;
        harness::label_namespace(&client, &ns.name, "mtls-e2e/node", Some(&name)).await;
        namespaces.push(ns);
    }
    let spiffe = |ns: &str, id: &str| format!("spiffe://cluster.local/ns/{ns}/sa/{id}");
    for (i, ns) in namespaces.iter().enumerate() {
        create_identity(&client, &ns.name, "server", &auth.name, serde_json::json!({"serviceNames": ["server"]})).await;
        for c in (0..clients).filter(|c| c % 2 == i) {
            create_identity(&client, &ns.name, &format!("client-{c}"), &auth.name, serde_json::json!({})).await;
        }
    }
    let mut probes = vec![];
    let mut servers = vec![];
    for (i, ns) in namespaces.iter().enumerate() {
        wait_identity_ready(&client, &ns.name, "server").await;
        // The clients that call this server live in the other namespace.
        let allow: Vec<String> = (0..clients)
            .filter(|c| c % 2 != i)
            .map(|c| spiffe(&namespaces[1 - i].name, &format!("client-{c}")))
            .collect();
        let mut args = vec!["serve".to_string(), "--bundle".into(), "/etc/bundle/ca.crt".to_string()];
        args.extend(allow.iter().flat_map(|a| ["--allow".to_string(), a.clone()]));
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let pod = probe_pod(
            "server",
            serde_json::json!({"app": "server"}),
            &args,
            &[("mtls", secret_volume("server-mtls")), ("bundle", configmap_volume(&cm))],
        );
        let ip = run_pods(&client, &ns.name, vec![pod]).await.remove("server").unwrap();
        servers.push(ip);
        probes.push((ns.name.clone(), "server".to_string()));
    }
    for c in 0..clients {
        let (own, other) = (c % 2, 1 - c % 2);
        let ns = &namespaces[own].name;
        let id = format!("client-{c}");
        wait_identity_ready(&client, ns, &id).await;
        let to = format!("{}:8443", servers[other]);
        let server_name = format!("server.{}.svc", namespaces[other].name);
        let expect = spiffe(&namespaces[other].name, "server");
        // Even clients trust the bundle ConfigMap, odd ones their Secret's ca.crt.
        let bundle = if c % 2 == 0 { "/etc/bundle/ca.crt" } else { "/etc/mtls/ca.crt" };
        let args = [
            "call",
            "--to",
            &to,
            "--server-name",
            &server_name,
            "--expect",
            &expect,
            "--bundle",
            bundle,
            "--interval-ms",
            "100",
        ];
        let pod = probe_pod(
            &id,
            serde_json::json!({"app": "client"}),
            &args,
            &[("mtls", secret_volume(&format!("{id}-mtls"))), ("bundle", configmap_volume(&cm))],
        );
        run_pods(&client, ns, vec![pod]).await;
        probes.push((ns.clone(), id));
    }
    let m = Mesh { client, auth, _namespaces: namespaces, probes, propagation };
    // Every probe has loaded its files and every client handshakes.
    let working = harness::wait_for(Duration::from_secs(30), || {
        let m = &m;
        async move {
            for (ns, pod) in m.probes.iter().filter(|(_, p)| p != "server") {
                (counts(&m.client, ns, pod).await.0 > 0).then_some(())?;
            }
            Some(())
        }
    })
    .await;
    if working.is_none() {
        let mut seen = vec![];
        for (ns, pod) in &m.probes {
            seen.push(format!("{ns}/{pod}: {:?}", counts(&m.client, ns, pod).await));
        }
        panic!("the probes never completed a handshake before the rotation: {seen:#?}");
    }
    m
}

impl Mesh {
    /// (ok, failed, some failures) summed over every probe.
    async fn totals(&self) -> (u64, u64, Vec<String>) {
        let (mut ok, mut failed, mut errors) = (0, 0, vec![]);
        for (ns, pod) in &self.probes {
            let (o, f, e) = counts(&self.client, ns, pod).await;
            ok += o;
            failed += f;
            errors.extend(e.into_iter().map(|e| format!("{ns}/{pod}: {e}")));
        }
        (ok, failed, errors)
    }

    /// How long a rotation may take: its waiting phases plus re-issuing, with room.
    fn rotation_timeout(&self) -> Duration {
        self.propagation * 6 + Duration::from_secs(120)
    }

    /// Every probe has loaded the leaf its Secret holds now, and the bundle it trusts holds the
    /// same CAs as that Secret's `ca.crt`: kubelet delivered the final state into every pod.
    async fn wait_final_state_delivered(&self) {
        let deadline = self.propagation + Duration::from_secs(30);
        let delivered = harness::wait_for(deadline, || async move {
            for (ns, pod) in &self.probes {
                let id = pod.clone();
                let s = get_secret(&self.client, ns, &format!("{id}-mtls")).await;
                let facts = mtls_operator::core::pki::inspect_leaf(&fixtures::data(&s, "tls.crt"), "").ok()?;
                let ev = events(&self.client, ns, pod).await;
                let loaded = of_kind(&ev, "loaded").last()?;
                (loaded["leaf_serial"].as_str() == Some(facts.facts.serial.as_str())).then_some(())?;
            }
            Some(())
        })
        .await;
        assert!(delivered.is_some(), "kubelet did not deliver the final leaves into every pod within {deadline:?}");
    }
}

#[tokio::test]
async fn rotation_and_rollback_on_real_pods_fail_no_handshake() {
    let client = harness::client().await;
    let (_, sync) = node(&client).await;
    let m = mesh("podrot", propagation_for(sync), 4).await;
    let name = m.auth.name.clone();
    let t0 = std::time::Instant::now();

    // A -> B.
    patch_rotation(&m.client, &name, serde_json::json!({"trigger": "first"})).await;
    let phases = watch_phases(&m.client, &name, m.rotation_timeout(), stable_at(2)).await;
    for p in ["Preparing", "Propagating", "Reissuing", "Draining", "Retiring", "Stable"] {
        assert!(phases.contains(&p.to_string()), "phase {p} never observed: {phases:?}");
    }
    m.wait_final_state_delivered().await;
    let after_first = m.totals().await;
    eprintln!(
        "rotation A->B on real pods in {:.0?}: {} handshakes, {} failed",
        t0.elapsed(),
        after_first.0,
        after_first.1
    );

    // B -> C, rolled back half-way through re-issuing.
    patch_rotation(&m.client, &name, serde_json::json!({"trigger": "second"})).await;
    watch_phases(&m.client, &name, m.rotation_timeout(), |a| {
        let st = a.status.as_ref();
        st.and_then(|s| s.phase.as_deref()) == Some("Reissuing")
            && st.and_then(|s| s.rotation_progress.as_ref()).is_some_and(|p| p.reissued * 2 >= p.total)
    })
    .await;
    patch_rotation(&m.client, &name, serde_json::json!({"action": "Rollback"})).await;
    watch_phases(&m.client, &name, m.rotation_timeout(), stable_at(2)).await;
    let a = fixtures::authority(&m.client, &name).await;
    assert!(a.status.as_ref().unwrap().rotation.as_ref().unwrap().rolled_back, "the second rotation was rolled back");
    m.wait_final_state_delivered().await;
    // One more kubelet delay: a pod still on its way to the final files would fail now.
    tokio::time::sleep(sync + Duration::from_secs(2)).await;

    let (ok, failed, errors) = m.totals().await;
    eprintln!(
        "rotation A->B and B->C rolled back, on {} real pods (propagationDelay {:?}, kubelet syncFrequency {sync:?}), \
         in {:.0?}: {ok} handshakes, {failed} failed",
        m.probes.len(),
        m.propagation,
        t0.elapsed()
    );
    assert_eq!(failed, 0, "failed handshakes during rotation: {errors:#?}");
    assert!(ok > after_first.0 && ok > 1000, "too few handshakes to mean anything: {ok}");
}

#[tokio::test]
async fn a_propagation_delay_shorter_than_the_real_kubelet_breaks_handshakes() {
    // The control: the operator assumes 1 s; the real kubelet takes up to syncFrequency and more.
    let client = harness::client().await;
    let (_, sync) = node(&client).await;
    let m = mesh("podrotbad", Duration::from_secs(1), 2).await;
    let name = m.auth.name.clone();
    patch_rotation(&m.client, &name, serde_json::json!({"trigger": "go"})).await;
    watch_phases(&m.client, &name, m.rotation_timeout(), stable_at(2)).await;
    tokio::time::sleep(sync * 2 + Duration::from_secs(5)).await;
    let (ok, failed, errors) = m.totals().await;
    eprintln!(
        "propagationDelay 1s below the real kubelet's delay (syncFrequency {sync:?}): {ok} handshakes, {failed} failed; first: {:?}",
        errors.first()
    );
    assert!(failed > 0, "the probes must see failures when propagationDelay is too short ({ok} handshakes)");
}
