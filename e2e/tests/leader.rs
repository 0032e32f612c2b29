//! Leader election and graceful shutdown, with real operator processes: two replicas, one
//! leads (only it reconciles), killing it hands over within the lease duration, SIGTERM releases
//! the Lease at once.

#[path = "harness.rs"]
#[allow(dead_code)]
mod harness;

use std::{
    process::Command,
    time::{Duration, Instant},
};

use k8s_openapi::api::{coordination::v1::Lease, core::v1::Namespace};
use kube::{
    Api,
    api::{DeleteParams, PostParams},
};

struct Replica {
    process: harness::OperatorProcess,
    identity: String,
}

fn start(namespace: &str, lease: &str, tag: &str) -> Replica {
    let dir = harness::kubeconfig_path().parent().unwrap().to_path_buf();
    let log = dir.join(format!("operator-leader-{namespace}-{tag}.log"));
    let identity = format!("replica-{tag}");
    let args = ["--namespace", namespace, "--leader-elect", "--lease-name", lease];
    Replica { process: harness::OperatorProcess::start(&args, &log, &[("POD_NAME", &identity)]), identity }
}

async fn reconciles(r: &Replica) -> Option<f64> {
    r.process.metric("mtls_operator_reconciles_total").await
}

async fn holder(api: &Api<Lease>, lease: &str) -> Option<String> {
    api.get_opt(lease).await.ok()??.spec?.holder_identity.filter(|h| !h.is_empty())
}

#[tokio::test]
async fn one_leader_writes_and_a_standby_takes_over() {
    let client = harness::client().await;
    harness::install_crds(&client).await;
    let ns = format!("leader-{:06x}", harness::rand_u32() & 0xffffff);
    let nsobj: Namespace = serde_json::from_value(serde_json::json!({"metadata": {"name": ns}})).unwrap();
    Api::<Namespace>::all(client.clone()).create(&PostParams::default(), &nsobj).await.unwrap();
    let leases: Api<Lease> = Api::namespaced(client.clone(), &ns);
    // Something to reconcile, so that whoever leads does observable work.
    let auth: mtls_operator::api::MtlsAuthority = serde_json::from_value(serde_json::json!({
        "metadata": {"name": ns},
        "spec": {"trustBundle": {"configMapName": format!("{ns}-bundle"), "namespaceSelector": {"matchLabels": {"none": "none"}}}}
    }))
    .unwrap();
    Api::<mtls_operator::api::MtlsAuthority>::all(client.clone()).create(&PostParams::default(), &auth).await.unwrap();

    let mut a = start(&ns, "mtls-operator", "a");
    let first =
        harness::wait_for(Duration::from_secs(30), || holder(&leases, "mtls-operator")).await.expect("someone leads");
    assert_eq!(first, a.identity);
    let mut b = start(&ns, "mtls-operator", "b");
    // Both are ready (the standby is a healthy standby); only the leader reconciles.
    for r in [&a, &b] {
        assert!(r.process.wait_readyz(200, Duration::from_secs(30)).await, "replica ready");
    }
    harness::wait_for(Duration::from_secs(30), || async { reconciles(&a).await.filter(|n| *n > 0.0) })
        .await
        .expect("leader reconciles");
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(reconciles(&b).await, Some(0.0), "the standby must not reconcile (or write) anything");
    assert_eq!(holder(&leases, "mtls-operator").await.as_deref(), Some(a.identity.as_str()));

    // Kill the leader outright: the standby takes over within the lease duration (15 s).
    a.process.kill9();
    let killed = Instant::now();
    harness::wait_for(Duration::from_secs(30), || async {
        (holder(&leases, "mtls-operator").await.as_deref() == Some(b.identity.as_str())).then_some(())
    })
    .await
    .expect("the standby takes over");
    let handover = killed.elapsed();
    eprintln!("handover after SIGKILL: {:.1} s", handover.as_secs_f64());
    assert!(handover < Duration::from_secs(15 + 3), "handover took {handover:?}");
    harness::wait_for(Duration::from_secs(30), || async { reconciles(&b).await.filter(|n| *n > 0.0) })
        .await
        .expect("new leader reconciles");

    // SIGTERM: a graceful exit that releases the Lease at once.
    let status = Command::new("kill").args(["-TERM", &b.process.child.id().to_string()]).status().unwrap();
    assert!(status.success());
    let exited = harness::wait_for(Duration::from_secs(15), || {
        let done = b.process.child.try_wait().unwrap();
        async move { done }
    })
    .await
    .expect("the operator exits on SIGTERM");
    assert!(exited.success(), "graceful shutdown exits 0, got {exited:?}");
    assert_eq!(holder(&leases, "mtls-operator").await, None, "the Lease is released on shutdown");

    let _ = Api::<mtls_operator::api::MtlsAuthority>::all(client.clone()).delete(&ns, &DeleteParams::default()).await;
    let _ = Api::<Namespace>::all(client).delete(&ns, &DeleteParams::default()).await;
}
