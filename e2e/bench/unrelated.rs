//! Unrelated Secrets: the background of a real cluster, which an operator that caches or watches
//! every Secret pays for in memory and start-up time. They are created before the operator starts,
//! in namespaces of their own, and kept: a later run against the same control plane reuses them
//! and only creates what is missing.

use std::{
    collections::{BTreeMap, HashSet},
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::Context as _;
use futures::StreamExt;
use k8s_openapi::{ByteString, api::core::v1::Secret};
use kube::{
    Api, Client, ResourceExt,
    api::{ListParams, PostParams},
};
use rand::{Rng, SeedableRng};

/// Label of the namespaces that hold the unrelated Secrets (not `mtls-bench`: those are removed
/// after every run, these are meant to stay).
pub const LABEL: &str = "mtls-bench-unrelated";

pub fn namespace_name(j: usize) -> String {
    format!("unrelated-{j}")
}

fn secret_name(i: usize) -> String {
    format!("unrelated-{i}")
}

/// Secret `i`: 1.5–4 KB of data; every fourth is a `kubernetes.io/tls` Secret, the rest `Opaque`
/// with one to three keys; every third carries labels an application might set.
pub fn secret(i: usize) -> Secret {
    let mut rng = rand::rngs::StdRng::seed_from_u64(i as u64);
    let size = 1500 + rng.random_range(0..2500usize);
    let mut blob = |n: usize| {
        let bytes: Vec<u8> = (0..n * 3 / 4).map(|_| rng.random()).collect();
        use base64_like::encode;
        encode(&bytes)
    };
    let (type_, data): (&str, BTreeMap<String, ByteString>) = if i.is_multiple_of(4) {
        let key = 300;
        let crt = format!(
            "-----BEGIN CERTIFICATE-----\n{}\n-----END CERTIFICATE-----\n",
            wrap(&blob(size.saturating_sub(key + 60)))
        );
        let key = format!("-----BEGIN PRIVATE KEY-----\n{}\n-----END PRIVATE KEY-----\n", wrap(&blob(key)));
        (
            "kubernetes.io/tls",
            [("tls.crt", crt), ("tls.key", key)].map(|(k, v)| (k.into(), ByteString(v.into()))).into(),
        )
    } else {
        let keys = 1 + i % 3;
        let data = (0..keys)
            .map(|k| (format!("key-{k}"), ByteString(blob(size / keys).into_bytes())))
            .collect::<BTreeMap<_, _>>();
        ("Opaque", data)
    };
    let labels: BTreeMap<String, String> = if i.is_multiple_of(3) {
        [("app".to_string(), format!("app-{}", i % 50)), ("tier".to_string(), "backend".to_string())].into()
    } else {
        BTreeMap::new()
    };
    Secret {
        metadata: kube::api::ObjectMeta {
            name: Some(secret_name(i)),
            labels: (!labels.is_empty()).then_some(labels),
            ..Default::default()
        },
        type_: Some(type_.into()),
        data: Some(data),
        ..Default::default()
    }
}

fn wrap(s: &str) -> String {
    s.as_bytes().chunks(64).map(|c| std::str::from_utf8(c).unwrap()).collect::<Vec<_>>().join("\n")
}

/// Enough of base64 for filler data (no dependency for it).
mod base64_like {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    pub fn encode(bytes: &[u8]) -> String {
        let mut out = String::with_capacity(bytes.len() * 4 / 3 + 4);
        for c in bytes.chunks(3) {
            let n = (c[0] as u32) << 16 | (*c.get(1).unwrap_or(&0) as u32) << 8 | *c.get(2).unwrap_or(&0) as u32;
            for k in 0..=c.len() {
                out.push(ALPHABET[(n >> (18 - 6 * k) & 63) as usize] as char);
            }
        }
        out
    }
}

pub struct Created {
    pub present: usize,
    pub created: usize,
    pub took: Duration,
    pub bytes: usize,
}

/// Makes sure `count` unrelated Secrets exist across `namespaces` namespaces, creating only the
/// missing ones, `concurrency` at a time.
pub async fn ensure(client: &Client, count: usize, namespaces: usize, concurrency: usize) -> anyhow::Result<Created> {
    let started = Instant::now();
    let nsapi: Api<k8s_openapi::api::core::v1::Namespace> = Api::all(client.clone());
    let mut existing: HashSet<(usize, String)> = HashSet::new();
    for j in 0..namespaces {
        let ns: k8s_openapi::api::core::v1::Namespace = serde_json::from_value(
            serde_json::json!({"metadata": {"name": namespace_name(j), "labels": {LABEL: "true"}}}),
        )?;
        match nsapi.create(&PostParams::default(), &ns).await {
            Ok(_) => {}
            Err(kube::Error::Api(e)) if e.code == 409 => {
                let api: Api<Secret> = Api::namespaced(client.clone(), &namespace_name(j));
                for s in api.list_metadata(&ListParams::default()).await.context("listing unrelated Secrets")?.items {
                    existing.insert((j, s.name_any()));
                }
            }
            Err(e) => return Err(e).with_context(|| format!("creating namespace {}", namespace_name(j))),
        }
    }
    let missing: Vec<usize> = (0..count).filter(|i| !existing.contains(&(i % namespaces, secret_name(*i)))).collect();
    let present = count - missing.len();
    if missing.is_empty() {
        return Ok(Created { present, created: 0, took: started.elapsed(), bytes: 0 });
    }
    println!(
        "unrelated Secrets: {present} of {count} already present; creating {} in {namespaces} namespaces, {concurrency} at a time ...",
        missing.len()
    );
    let done = Arc::new(AtomicUsize::new(0));
    let bytes = Arc::new(AtomicUsize::new(0));
    let progress = {
        let done = done.clone();
        let total = missing.len();
        tokio::spawn(async move {
            let t0 = Instant::now();
            loop {
                tokio::time::sleep(Duration::from_secs(10)).await;
                let d = done.load(Ordering::Relaxed);
                eprintln!("  {:>5.0} s: {d} of {total} unrelated Secrets created", t0.elapsed().as_secs_f64());
            }
        })
    };
    let results: Vec<anyhow::Result<()>> = futures::stream::iter(missing.iter().copied())
        .map(|i| {
            let api: Api<Secret> = Api::namespaced(client.clone(), &namespace_name(i % namespaces));
            let (done, bytes) = (done.clone(), bytes.clone());
            async move {
                let s = secret(i);
                let size: usize = s.data.as_ref().map(|d| d.values().map(|v| v.0.len()).sum()).unwrap_or(0);
                // A busy API server may answer 429 or time out: retry a few times.
                let mut attempt = 0;
                loop {
                    match api.create(&PostParams::default(), &s).await {
                        Ok(_) => break,
                        Err(kube::Error::Api(e)) if e.code == 409 => break,
                        Err(_) if attempt < 5 => {
                            attempt += 1;
                            tokio::time::sleep(Duration::from_millis(200 * attempt)).await;
                        }
                        Err(e) => return Err(e).with_context(|| format!("creating unrelated Secret {i}")),
                    }
                }
                done.fetch_add(1, Ordering::Relaxed);
                bytes.fetch_add(size, Ordering::Relaxed);
                Ok(())
            }
        })
        .buffer_unordered(concurrency)
        .collect()
        .await;
    progress.abort();
    results.into_iter().collect::<anyhow::Result<Vec<()>>>()?;
    Ok(Created { present, created: missing.len(), took: started.elapsed(), bytes: bytes.load(Ordering::Relaxed) })
}
