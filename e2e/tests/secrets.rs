//! Secrets stay secret (DESIGN §5): a full run of the real operator with every crate at trace
//! level — first with text logs, then with JSON logs — leaves no private key material in its
//! log, in any Event (events.k8s.io/v1 and core/v1), in any MtlsIdentity or MtlsAuthority (status
//! included, every version seen), in the bundle ConfigMaps, in the public fields of identity
//! Secrets, or in /metrics.
//!
//! The run covers generated CAs (RSA, Ed25519, ECDSA), a supplied intermediate with its chain,
//! identities of all six key algorithms, a tampered Secret and its repair, renewals, a staged CA
//! rotation, and supplied CAs that are wrong in ways that make the operator talk about keys
//! (a mismatched key, a truncated key, a key pasted into `tls.crt`). Every private key that
//! exists at any point (watched as it is written, before anything is deleted) is then searched
//! for in every encoding a careless log line could use; a planted key proves the search works.

#[path = "harness.rs"]
#[allow(dead_code)]
mod harness;

use std::{
    collections::{BTreeMap, HashSet},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use futures::StreamExt;
use k8s_openapi::{
    ByteString,
    api::core::v1::{ConfigMap, Namespace, Secret},
};
use kube::{
    Api, Client, Resource, ResourceExt,
    api::{DeleteParams, ListParams, Patch, PatchParams, PostParams},
    runtime::{WatchStreamExt, watcher},
};
use mtls_operator::api::{MtlsAuthority, MtlsIdentity};
use serde_json::{Value, json};

const NS: &str = harness::OPERATOR_NAMESPACE;
const WAIT: Duration = Duration::from_secs(60);
/// Every crate at trace, named explicitly so that nothing is left at a default level.
const TRACE_EVERYTHING: &str = "trace,mtls_operator=trace,kube=trace,kube_client=trace,kube_runtime=trace,\
hyper=trace,hyper_util=trace,h2=trace,tower=trace,tower_http=trace,rustls=trace,tokio_rustls=trace,hyper_rustls=trace";

/// The private-key search: needles from every key, in every encoding, matched over a normalised
/// haystack.
mod scan {
    use std::collections::HashMap;

    /// Length of a needle: any run of this many characters of an encoded key is a leak.
    pub const WINDOW: usize = 40;
    /// A window counts only when it covers at least this many bytes of the key's secret part.
    /// Structure every key of a type shares (ASN.1 headers, OIDs) and the public parts of a key
    /// (an RSA key holds its modulus, which every certificate for it also carries) never match
    /// on their own.
    const MIN_SECRET_BYTES: usize = 10;
    /// Markers that appear only where a PEM private key (or its base64, as in a Secret's JSON) is.
    const MARKERS: [&str; 3] = ["-----BEGIN PRIVATE KEY", "-----BEGIN EC PRIVATE KEY", "-----BEGIN RSA PRIVATE KEY"];
    const PLAIN_MARKERS: [&str; 4] =
        ["PRIVATE KEY", "BEGIN EC PRIVATE", "BEGIN RSA PRIVATE", "BEGIN ENCRYPTED PRIVATE"];

    /// Which DER bytes one character of an encoding stands for (inclusive range).
    type Span = Option<(usize, usize)>;
    /// An encoded key, and the DER bytes each of its characters stands for.
    type Encoded = (Vec<u8>, Vec<Span>);

    struct Encoding {
        key: usize,
        name: String,
        text: Vec<u8>,
    }

    pub struct Key {
        pub label: String,
        pub der: Vec<u8>,
        /// The secret components: EC scalar, Ed25519 seed, RSA d, p, q, dp, dq, qinv.
        pub secrets: Vec<(usize, usize)>,
        pub kind: &'static str,
        /// The text the key was found in (a Secret value), for the base64-of-the-PEM encoding,
        /// and where this key's base64 body starts in it.
        pub pem: String,
        pub body_start: usize,
    }

    #[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
    pub struct Finding {
        pub source: String,
        pub line: usize,
        pub key: String,
        pub encoding: String,
    }

    // --- encodings, each with the DER bytes every character stands for ---

    const B64: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    const B64URL: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";

    fn join(a: Span, b: Span) -> Span {
        match (a, b) {
            (Some((a0, a1)), Some((b0, b1))) => Some((a0.min(b0), a1.max(b1))),
            (x, None) | (None, x) => x,
        }
    }

    pub fn base64(data: &[u8]) -> String {
        String::from_utf8(b64(data, &vec![None; data.len()], B64, true).0).unwrap()
    }

    fn b64(data: &[u8], map: &[Span], alphabet: &[u8; 64], pad: bool) -> Encoded {
        let (mut out, mut spans) = (vec![], vec![]);
        for (ci, chunk) in data.chunks(3).enumerate() {
            let n = u32::from(chunk[0]) << 16
                | u32::from(*chunk.get(1).unwrap_or(&0)) << 8
                | u32::from(*chunk.get(2).unwrap_or(&0));
            let chars = chunk.len() + 1;
            for j in 0..4 {
                if j < chars {
                    out.push(alphabet[(n >> (18 - 6 * j)) as usize & 63]);
                    // Character j of a group carries bits of bytes (6j)/8 ..= (6j+5)/8.
                    let (b0, b1) = (ci * 3 + (6 * j) / 8, (ci * 3 + (6 * j + 5) / 8).min(data.len() - 1));
                    spans.push(join(map[b0], map[b1]));
                } else if pad {
                    out.push(b'=');
                    spans.push(None);
                }
            }
        }
        (out, spans)
    }

    fn hex(data: &[u8], map: &[Span], upper: bool) -> Encoded {
        let s = hex::encode(data);
        let s = if upper { s.to_uppercase() } else { s };
        (s.into_bytes(), map.iter().flat_map(|m| [*m, *m]).collect())
    }

    /// `[48, 130, ...]`, the Debug form of a byte slice (whitespace is normalised away).
    fn decimal(data: &[u8], map: &[Span]) -> Encoded {
        let (mut out, mut spans) = (vec![], vec![]);
        for (i, b) in data.iter().enumerate() {
            if i > 0 {
                out.push(b',');
                spans.push(None);
            }
            for c in b.to_string().bytes() {
                out.push(c);
                spans.push(map[i]);
            }
        }
        (out, spans)
    }

    // --- finding keys ---

    /// Every PEM private key block in `text` (whole or cut off), decoded as far as it goes.
    pub fn keys_in(label: &str, text: &str) -> Vec<Key> {
        let mut keys = vec![];
        let mut rest = 0;
        while let Some(at) = text[rest..].find("-----BEGIN ") {
            let begin = rest + at;
            let Some(tag_end) = text[begin + 11..].find("-----").map(|e| begin + 11 + e) else { break };
            let tag = &text[begin + 11..tag_end];
            let body_start = tag_end + 5;
            let body_end = text[body_start..].find("-----").map_or(text.len(), |e| body_start + e);
            rest = body_end;
            if !tag.ends_with("PRIVATE KEY") {
                continue;
            }
            let body: Vec<u8> = text[body_start..body_end].bytes().filter(|c| B64.contains(c)).collect();
            let der = decode_b64(&body);
            if der.len() < 16 {
                continue;
            }
            let (secrets, kind) = secret_parts(&der);
            keys.push(Key { label: format!("{label} ({tag})"), der, secrets, kind, pem: text.to_string(), body_start });
        }
        keys
    }

    fn decode_b64(s: &[u8]) -> Vec<u8> {
        let val = |c: u8| B64.iter().position(|x| *x == c).map(|v| v as u32);
        let mut out = vec![];
        for q in s.chunks(4) {
            let v: Vec<u32> = q.iter().map_while(|c| val(*c)).collect();
            let n = v.iter().enumerate().fold(0u32, |n, (i, x)| n | x << (18 - 6 * i));
            for j in 0..v.len().saturating_sub(1) {
                out.push((n >> (16 - 8 * j)) as u8);
            }
        }
        out
    }

    /// (tag, content start, content end) of each DER element in `der[start..end]`; an element
    /// cut off by the end of the input ends there (so that a truncated key still parses).
    fn children(der: &[u8], start: usize, end: usize) -> Vec<(u8, usize, usize)> {
        let mut out = vec![];
        let mut i = start;
        while i + 2 <= end {
            let tag = der[i];
            let l0 = der[i + 1] as usize;
            let (len, hdr) = if l0 < 0x80 {
                (l0, 2)
            } else {
                let n = l0 & 0x7f;
                if n == 0 || n > 3 || i + 2 + n > end {
                    break;
                }
                (der[i + 2..i + 2 + n].iter().fold(0usize, |a, b| a << 8 | *b as usize), 2 + n)
            };
            if i + hdr + len > end {
                out.push((tag, (i + hdr).min(end), end));
                break;
            }
            out.push((tag, i + hdr, i + hdr + len));
            i += hdr + len;
        }
        out
    }

    /// The byte ranges of the secret components: PKCS#8 (EC, Ed25519, RSA), SEC1 and PKCS#1.
    /// A cut-off key yields what it still holds of them; one that cannot be parsed at all counts
    /// as secret throughout.
    fn secret_parts(der: &[u8]) -> (Vec<(usize, usize)>, &'static str) {
        let inner = |s: usize, e: usize| -> Option<(Vec<(usize, usize)>, &'static str)> {
            let first = *children(der, s, e).first()?;
            match first {
                (0x04, cs, ce) if ce > cs && ce - cs <= 32 => Some((vec![(cs, ce)], "Ed25519")),
                (0x30, cs, ce) => {
                    let it = children(der, cs, ce);
                    if it.len() >= 2 && it[0].0 == 0x02 && it[1].0 == 0x04 {
                        Some((vec![(it[1].1, it[1].2)], "EC"))
                    } else if it.len() >= 2 && it.iter().take(9).all(|c| c.0 == 0x02) {
                        // version, n, e (public), then d, p, q, dp, dq, qinv
                        Some((it.iter().take(9).skip(3).map(|c| (c.1, c.2)).collect(), "RSA"))
                    } else {
                        None
                    }
                }
                _ => None,
            }
        };
        let parsed = children(der, 0, der.len()).first().and_then(|&(t, s, e)| {
            let items = children(der, s, e);
            if t == 0x30 && items.len() >= 3 && items[0].0 == 0x02 && items[1].0 == 0x30 && items[2].0 == 0x04 {
                inner(items[2].1, items[2].2) // PKCS#8: the privateKey OCTET STRING
            } else {
                inner(0, der.len())
            }
        });
        parsed.unwrap_or_else(|| (vec![(0, der.len())], "unparsed"))
    }

    // --- the index and the search ---

    const B: u64 = 0x0100_0000_01b3;

    fn hash(w: &[u8]) -> u64 {
        w.iter().fold(0u64, |h, &c| h.wrapping_mul(B).wrapping_add(u64::from(c)))
    }

    fn bloom_bit(h: u64) -> usize {
        (h.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 40) as usize
    }

    pub struct Index {
        pub keys: Vec<Key>,
        encodings: Vec<Encoding>,
        bloom: Vec<u64>,
        table: HashMap<u64, Vec<(u32, u32)>>,
        pub needles: usize,
    }

    impl Index {
        pub fn new(keys: Vec<Key>) -> Index {
            let mut idx =
                Index { keys: vec![], encodings: vec![], bloom: vec![0; 1 << 18], table: HashMap::new(), needles: 0 };
            for key in keys {
                idx.add(key);
            }
            idx
        }

        fn add(&mut self, key: Key) {
            let k = self.keys.len();
            let id: Vec<Span> = (0..key.der.len()).map(|i| Some((i, i))).collect();
            let mut encs: Vec<(String, Encoded)> = vec![
                ("base64 (the PEM body)".into(), b64(&key.der, &id, B64, true)),
                ("base64url".into(), b64(&key.der, &id, B64URL, false)),
                ("hex".into(), hex(&key.der, &id, false)),
                ("HEX".into(), hex(&key.der, &id, true)),
                ("byte list".into(), decimal(&key.der, &id)),
            ];
            // The PEM text itself base64-encoded, as a Secret's `data` is in JSON.
            {
                let mut map = vec![None; key.pem.len()];
                let mut k6 = 0usize;
                for (i, c) in key.pem.bytes().enumerate().skip(key.body_start) {
                    if c == b'-' {
                        break;
                    }
                    if B64.contains(&c) {
                        let (b0, b1) = ((6 * k6) / 8, ((6 * k6 + 5) / 8).min(key.der.len().saturating_sub(1)));
                        if b0 < key.der.len() {
                            map[i] = Some((b0, b1));
                        }
                        k6 += 1;
                    }
                }
                encs.push(("base64 of the PEM text".into(), b64(key.pem.as_bytes(), &map, B64, true)));
                // `ByteString([45, 45, ...])`: a Secret's data printed with Debug.
                encs.push(("byte list of the PEM text".into(), decimal(key.pem.as_bytes(), &map)));
            }
            // Each secret component on its own (minimal big-endian, as a library would print it).
            for &(s, e) in &key.secrets {
                let zeros = key.der[s..e].iter().take_while(|b| **b == 0).count();
                let part = &key.der[s + zeros..e];
                let map: Vec<Span> = (s + zeros..e).map(|i| Some((i, i))).collect();
                encs.push((format!("{} secret, base64", key.kind), b64(part, &map, B64, true)));
                encs.push((format!("{} secret, base64url", key.kind), b64(part, &map, B64URL, false)));
            }
            let mut secret_prefix = vec![0usize; key.der.len() + 1];
            for i in 0..key.der.len() {
                let secret = key.secrets.iter().any(|&(s, e)| (s..e).contains(&i));
                secret_prefix[i + 1] = secret_prefix[i] + usize::from(secret);
            }
            for (name, (text, spans)) in encs {
                if text.len() < WINDOW {
                    continue;
                }
                let e = self.encodings.len() as u32;
                // first[i]: first character at or after i with a span; last[i]: last at or before i.
                let mut first = vec![usize::MAX; spans.len() + 1];
                for i in (0..spans.len()).rev() {
                    first[i] = if spans[i].is_some() { i } else { first[i + 1] };
                }
                let mut last = vec![usize::MAX; spans.len()];
                for i in 0..spans.len() {
                    last[i] = if spans[i].is_some() {
                        i
                    } else if i > 0 {
                        last[i - 1]
                    } else {
                        usize::MAX
                    };
                }
                for start in 0..=text.len() - WINDOW {
                    let (f, l) = (first[start], last[start + WINDOW - 1]);
                    if f == usize::MAX || l == usize::MAX || f > l {
                        continue;
                    }
                    let (lo, hi) = (spans[f].unwrap().0, spans[l].unwrap().1);
                    if secret_prefix[hi + 1] - secret_prefix[lo] < MIN_SECRET_BYTES {
                        continue;
                    }
                    let h = hash(&text[start..start + WINDOW]);
                    let bit = bloom_bit(h);
                    self.bloom[bit / 64] |= 1 << (bit % 64);
                    self.table.entry(h).or_default().push((e, start as u32));
                    self.needles += 1;
                }
                self.encodings.push(Encoding { key: k, name, text });
            }
            self.keys.push(key);
        }

        /// Every key found in `text`, at most one finding per (key, encoding) and source.
        pub fn scan(&self, source: &str, text: &[u8]) -> Vec<Finding> {
            let mut found = std::collections::BTreeSet::new();
            let as_str = String::from_utf8_lossy(text);
            let markers: Vec<(String, &str)> =
                MARKERS.iter().map(|m| (base64(m.as_bytes())[..m.len() / 3 * 4].to_string(), *m)).collect();
            for (i, line) in as_str.lines().enumerate() {
                for m in PLAIN_MARKERS {
                    if line.contains(m) {
                        found.insert(Finding {
                            source: source.into(),
                            line: i + 1,
                            key: "(any key)".into(),
                            encoding: format!("marker {m:?}"),
                        });
                    }
                }
                for (stable, m) in &markers {
                    if line.contains(stable.as_str()) {
                        found.insert(Finding {
                            source: source.into(),
                            line: i + 1,
                            key: "(any key)".into(),
                            encoding: format!("marker base64({m:?})"),
                        });
                    }
                }
            }
            let (norm, lines) = normalize(text);
            if norm.len() < WINDOW {
                return found.into_iter().collect();
            }
            let pow = (0..WINDOW - 1).fold(1u64, |p, _| p.wrapping_mul(B));
            let mut h = hash(&norm[..WINDOW]);
            let mut start = 0;
            loop {
                let bit = bloom_bit(h);
                if self.bloom[bit / 64] & (1 << (bit % 64)) != 0 {
                    for &(e, at) in self.table.get(&h).into_iter().flatten() {
                        let enc = &self.encodings[e as usize];
                        if enc.text[at as usize..at as usize + WINDOW] == norm[start..start + WINDOW] {
                            let line = lines.partition_point(|&l| l <= start);
                            found.insert(Finding {
                                source: source.into(),
                                line,
                                key: self.keys[enc.key].label.clone(),
                                encoding: enc.name.clone(),
                            });
                        }
                    }
                }
                if start + WINDOW >= norm.len() {
                    break;
                }
                h = h
                    .wrapping_sub(u64::from(norm[start]).wrapping_mul(pow))
                    .wrapping_mul(B)
                    .wrapping_add(u64::from(norm[start + WINDOW]));
                start += 1;
            }
            // One finding per (key, encoding): the first line it appears on.
            let mut seen = std::collections::HashSet::new();
            found.into_iter().filter(|f| seen.insert((f.key.clone(), f.encoding.clone()))).collect()
        }
    }

    /// Removes whitespace and escape sequences (`\n` in a Debug string, `\\n` in a JSON log of
    /// one), so that a key split over lines or escaped is one run of characters. Returns the
    /// normalised text and where each original line starts in it.
    pub fn normalize(text: &[u8]) -> (Vec<u8>, Vec<usize>) {
        let mut out = Vec::with_capacity(text.len());
        let mut lines = vec![0];
        let mut i = 0;
        while i < text.len() {
            let c = text[i];
            if c == b'\n' {
                lines.push(out.len());
                i += 1;
            } else if c.is_ascii_whitespace() {
                i += 1;
            } else if c == b'\\' {
                while i < text.len() && text[i] == b'\\' {
                    i += 1;
                }
                if i < text.len() && matches!(text[i], b'n' | b'r' | b't') {
                    i += 1;
                }
            } else {
                out.push(c);
                i += 1;
            }
        }
        (out, lines)
    }
}

/// Everything the run wrote that must not hold a key, and every key that existed.
#[derive(Default)]
struct Seen {
    /// Secret value -> where it was seen (every version of every Secret holding a private key).
    keys: BTreeMap<String, String>,
    /// Source name -> serialized objects (every version seen).
    corpus: BTreeMap<&'static str, Vec<String>>,
    versions: HashSet<String>,
}

type Shared = Arc<Mutex<Seen>>;

fn note_keys(seen: &Shared, s: &Secret) {
    let mut g = seen.lock().unwrap();
    for (k, v) in s.data.iter().flatten() {
        let text = String::from_utf8_lossy(&v.0);
        if text.contains("PRIVATE KEY") && !g.keys.contains_key(text.as_ref()) {
            let label = format!("Secret {}/{} [{k}]", s.namespace().unwrap_or_default(), s.name_any());
            g.keys.insert(text.into_owned(), label);
        }
    }
}

fn note_object<K: Resource + serde::Serialize>(seen: &Shared, source: &'static str, obj: &K) {
    let version = format!(
        "{source}/{}/{}",
        obj.meta().uid.clone().unwrap_or_default(),
        obj.resource_version().unwrap_or_default()
    );
    let mut g = seen.lock().unwrap();
    if g.versions.insert(version) {
        g.corpus.entry(source).or_default().push(serde_json::to_string(obj).unwrap());
    }
}

/// Watches every Secret (for keys) and everything that must stay clean, cluster-wide, for the
/// whole run: a key that is replaced a second later (renewal, rotation, repair) is still caught.
fn watch_all(client: &Client, seen: &Shared) {
    fn spawn<K, F>(client: &Client, f: F)
    where
        K: Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug + Send + Sync + 'static,
        K::DynamicType: Default,
        F: Fn(&K) + Send + 'static,
    {
        let stream =
            watcher(Api::<K>::all(client.clone()), watcher::Config::default()).default_backoff().applied_objects();
        tokio::spawn(async move {
            let mut stream = std::pin::pin!(stream);
            while let Some(item) = stream.next().await {
                if let Ok(obj) = item {
                    f(&obj);
                }
            }
        });
    }
    let s = seen.clone();
    spawn::<Secret, _>(client, move |x| note_keys(&s, x));
    let s = seen.clone();
    spawn::<MtlsIdentity, _>(client, move |x| note_object(&s, "MtlsIdentity objects", x));
    let s = seen.clone();
    spawn::<MtlsAuthority, _>(client, move |x| note_object(&s, "MtlsAuthority objects", x));
    let s = seen.clone();
    spawn::<k8s_openapi::api::events::v1::Event, _>(client, move |x| note_object(&s, "Events (events.k8s.io/v1)", x));
    let s = seen.clone();
    spawn::<k8s_openapi::api::core::v1::Event, _>(client, move |x| note_object(&s, "Events (core/v1)", x));
    let s = seen.clone();
    spawn::<ConfigMap, _>(client, move |x| note_object(&s, "ConfigMaps", x));
}

/// The operator binary at trace level, its stdout and stderr in one file.
struct Operator {
    child: Child,
    url: String,
    log: PathBuf,
}

impl Operator {
    async fn start(format: &str) -> Operator {
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let dir = harness::kubeconfig_path().parent().map(PathBuf::from).unwrap_or_else(std::env::temp_dir);
        let log = dir.join(format!("operator-secrets-{format}-{port}.log"));
        let out = std::fs::File::create(&log).unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_mtls-operator"))
            .args(["run", "--namespace", NS, "--log-format", format, "--exit-on-stdin-close"])
            .args(["--listen", &format!("127.0.0.1:{port}")])
            .env("KUBECONFIG", harness::kubeconfig_path())
            .env("RUST_LOG", TRACE_EVERYTHING)
            .stdin(Stdio::piped())
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            .spawn()
            .expect("start the operator binary");
        let op = Operator { child, url: format!("http://127.0.0.1:{port}"), log };
        let ready = format!("{}/readyz", op.url);
        harness::wait_for(Duration::from_secs(30), || {
            let ready = ready.clone();
            async move { harness::http_get(&ready).await.ok().filter(|(c, _)| *c == 200).map(|_| ()) }
        })
        .await
        .unwrap_or_else(|| panic!("operator ({format} logs) did not become ready; log: {}", op.log.display()));
        op
    }

    async fn metrics(&self) -> String {
        let (code, body) = harness::http_get(&format!("{}/metrics", self.url)).await.expect("GET /metrics");
        assert_eq!(code, 200);
        assert!(body.contains("mtls_operator_"), "no operator metrics:\n{body}");
        body
    }

    /// SIGTERM, then wait for a clean exit.
    fn stop(&mut self) {
        let status = Command::new("kill").args(["-TERM", &self.child.id().to_string()]).status().unwrap();
        assert!(status.success());
        let deadline = Instant::now() + Duration::from_secs(30);
        while self.child.try_wait().unwrap().is_none() {
            assert!(Instant::now() < deadline, "the operator did not exit on SIGTERM");
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for Operator {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Deletes what the test created (authorities with their CA Secrets, Secrets, namespaces).
#[derive(Default)]
struct Cleanup {
    authorities: Vec<String>,
    secrets: Vec<String>,
    namespaces: Vec<String>,
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        if std::env::var_os("MTLS_E2E_KEEP").is_some() {
            return;
        }
        let (auths, secrets, namespaces) = (
            std::mem::take(&mut self.authorities),
            std::mem::take(&mut self.secrets),
            std::mem::take(&mut self.namespaces),
        );
        harness::cleanup(move |client| async move {
            let api: Api<Secret> = Api::namespaced(client.clone(), NS);
            for a in &auths {
                let _ = Api::<MtlsAuthority>::all(client.clone()).delete(a, &DeleteParams::default()).await;
                let lp = ListParams::default().labels(&format!("mtls.io/authority={a}"));
                let _ = api.delete_collection(&DeleteParams::default(), &lp).await;
            }
            for s in &secrets {
                let _ = api.delete(s, &DeleteParams::default()).await;
            }
            for n in &namespaces {
                let _ = Api::<Namespace>::all(client.clone()).delete(n, &DeleteParams::background()).await;
            }
        });
    }
}

/// An authority that publishes its bundle only into this run's namespace.
async fn create_authority(client: &Client, cleanup: &mut Cleanup, run: &str, suffix: &str, mut spec: Value) -> String {
    let name = format!("sec-{run}-{suffix}");
    let selector = json!({"matchLabels": {"mtls-e2e/secrets": run}});
    spec["trustBundle"] = json!({"configMapName": format!("{name}-bundle"), "namespaceSelector": selector});
    let obj: MtlsAuthority = serde_json::from_value(json!({"metadata": {"name": name}, "spec": spec})).unwrap();
    Api::<MtlsAuthority>::all(client.clone()).create(&PostParams::default(), &obj).await.unwrap();
    cleanup.authorities.push(name.clone());
    name
}

fn secret(name: &str, data: &[(&str, &str)]) -> Secret {
    Secret {
        metadata: kube::api::ObjectMeta { name: Some(name.into()), ..Default::default() },
        data: Some(data.iter().map(|(k, v)| (k.to_string(), ByteString(v.as_bytes().to_vec()))).collect()),
        ..Default::default()
    }
}

fn ready(obj: &Value) -> Option<(String, String)> {
    let c = obj["status"]["conditions"].as_array()?.iter().find(|c| c["type"] == "Ready")?;
    Some((c["status"].as_str()?.to_string(), c["reason"].as_str()?.to_string()))
}

async fn authority_json(client: &Client, name: &str) -> Value {
    serde_json::to_value(Api::<MtlsAuthority>::all(client.clone()).get(name).await.unwrap()).unwrap()
}

async fn wait_authority(client: &Client, name: &str, status: &str, reason: &str) {
    let ok = harness::wait_for(WAIT, || async move {
        let a = authority_json(client, name).await;
        (ready(&a) == Some((status.into(), reason.into()))).then_some(())
    })
    .await;
    if ok.is_none() {
        panic!(
            "authority {name} never reported Ready={status}/{reason}: {}",
            authority_json(client, name).await["status"]
        );
    }
}

async fn wait_identity_ready(client: &Client, ns: &str, name: &str) -> Value {
    let api = &Api::<MtlsIdentity>::namespaced(client.clone(), ns);
    let found = harness::wait_for(WAIT, || async move {
        let i = serde_json::to_value(api.get(name).await.ok()?).unwrap();
        (ready(&i)?.0 == "True" && i["status"]["observedGeneration"] == i["metadata"]["generation"]).then_some(i)
    })
    .await;
    match found {
        Some(i) => i,
        None => panic!("identity {ns}/{name} did not become Ready: {:?}", api.get(name).await.map(|i| i.status)),
    }
}

async fn serial(client: &Client, ns: &str, secret: &str) -> Option<String> {
    let s = Api::<Secret>::namespaced(client.clone(), ns).get_opt(secret).await.ok()??;
    s.annotations().get("mtls.io/serial").cloned()
}

fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl").current_dir(dir).args(args).output().expect("openssl is installed");
    assert!(out.status.success(), "openssl {args:?}: {}", String::from_utf8_lossy(&out.stderr));
}

fn read(dir: &Path, f: &str) -> String {
    std::fs::read_to_string(dir.join(f)).unwrap()
}

#[tokio::test]
async fn no_private_key_material_in_logs_events_status_or_metrics() {
    let began = Instant::now();
    let client = harness::client().await;
    harness::install_crds(&client).await;
    let nss: Api<Namespace> = Api::all(client.clone());
    let _ =
        nss.create(&PostParams::default(), &serde_json::from_value(json!({"metadata": {"name": NS}})).unwrap()).await;
    let seen: Shared = Arc::default();
    watch_all(&client, &seen);
    let mut cleanup = Cleanup::default();
    let run = format!("{:06x}", harness::rand_u32() & 0xffffff);
    let ns = format!("secrets-{run}");
    nss.create(
        &PostParams::default(),
        &serde_json::from_value(json!({"metadata": {"name": ns, "labels": {"mtls-e2e/secrets": run}}})).unwrap(),
    )
    .await
    .unwrap();
    cleanup.namespaces.push(ns.clone());
    let auths: Api<MtlsAuthority> = Api::all(client.clone());
    let secrets: Api<Secret> = Api::namespaced(client.clone(), NS);
    let c = &mut cleanup;

    // ---- Part 1: text logs ----
    let mut op = Operator::start("text").await;
    let rsa = create_authority(&client, c, &run, "rsa", json!({"ca": {"generate": {"algorithm": "RSA-2048"}}})).await;
    let ed = create_authority(&client, c, &run, "ed", json!({"ca": {"generate": {"algorithm": "Ed25519"}}})).await;
    let p384 = create_authority(
        &client,
        c,
        &run,
        "p384",
        json!({"ca": {"generate": {"algorithm": "ECDSA-P384"}}, "leaf": {"minDuration": "1m"},
               "rotation": {"propagationDelay": "1s", "reissueRate": 50}}),
    )
    .await;

    // A supplied intermediate (SEC1 key) under an offline root, with its chain.
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    std::fs::write(d.join("ca.ext"), "basicConstraints=critical,CA:TRUE\nkeyUsage=critical,keyCertSign,cRLSign\n")
        .unwrap();
    openssl(d, &["ecparam", "-name", "prime256v1", "-genkey", "-noout", "-out", "root.key"]);
    openssl(d, &["req", "-x509", "-key", "root.key", "-out", "root.crt", "-days", "30", "-subj", "/CN=Secrets Root"]);
    openssl(d, &["ecparam", "-name", "prime256v1", "-genkey", "-noout", "-out", "int.key"]);
    openssl(d, &["req", "-new", "-key", "int.key", "-out", "int.csr", "-subj", "/CN=Secrets Intermediate"]);
    openssl(
        d,
        &[
            "x509",
            "-req",
            "-in",
            "int.csr",
            "-CA",
            "root.crt",
            "-CAkey",
            "root.key",
            "-CAcreateserial",
            "-days",
            "20",
            "-extfile",
            "ca.ext",
            "-out",
            "int.crt",
        ],
    );
    openssl(d, &["genrsa", "-traditional", "-out", "stray-rsa.key", "2048"]);
    let (root, int, int_key, stray_rsa) =
        (read(d, "root.crt"), read(d, "int.crt"), read(d, "int.key"), read(d, "stray-rsa.key"));
    assert!(int_key.contains("BEGIN EC PRIVATE KEY") && stray_rsa.contains("BEGIN RSA PRIVATE KEY"));
    let supplied = format!("sec-{run}-supplied");
    secrets
        .create(
            &PostParams::default(),
            &secret(&supplied, &[("tls.crt", &format!("{int}{root}")), ("tls.key", &int_key), ("ca.crt", &root)]),
        )
        .await
        .unwrap();
    c.secrets.push(supplied.clone());
    let sup = create_authority(&client, c, &run, "sup", json!({"ca": {"secretRef": {"name": supplied}}})).await;
    for a in [&rsa, &ed, &p384, &sup] {
        wait_authority(&client, a, "True", "CaReady").await;
    }

    // Identities of all six key algorithms, over all four CAs.
    let algs = ["ECDSA-P256", "ECDSA-P384", "Ed25519", "RSA-2048", "RSA-3072", "RSA-4096"];
    let ids: Api<MtlsIdentity> = Api::namespaced(client.clone(), &ns);
    for (i, (alg, auth)) in algs.iter().zip([&rsa, &ed, &sup, &p384, &rsa, &ed]).enumerate() {
        let obj: MtlsIdentity = serde_json::from_value(json!({"metadata": {"name": format!("id{i}")},
            "spec": {"authorityRef": auth, "serviceNames": [format!("id{i}")], "privateKey": {"algorithm": alg}}}))
        .unwrap();
        ids.create(&PostParams::default(), &obj).await.unwrap();
    }
    for i in 0..algs.len() {
        wait_identity_ready(&client, &ns, &format!("id{i}")).await;
    }

    // Supplied CAs that are wrong in ways that make the operator talk about keys.
    let (good_crt, good_key) = mtls_operator::core::pki::generate_ca(
        "bad inputs",
        &[],
        mtls_operator::api::KeyAlgorithm::EcdsaP256,
        jiff::Timestamp::now(),
        Duration::from_secs(86400),
    )
    .unwrap();
    let good_key = good_key.expose().to_string();
    let mut lines: Vec<&str> = good_key.lines().collect();
    lines.insert(2, ""); // a stray blank line, as copy and paste leaves them
    let key_with_blank_line = lines.join("\n") + "\n";
    let bad = [
        ("mismatch", vec![("tls.crt", good_crt.as_str()), ("tls.key", stray_rsa.as_str())], "CaKeyMismatch"),
        (
            "truncated",
            vec![("tls.crt", good_crt.as_str()), ("tls.key", &good_key[..good_key.len() / 2])],
            "CaInvalidKey",
        ),
        ("keyincrt", vec![("tls.crt", good_key.as_str()), ("tls.key", good_key.as_str())], "CaInvalidPem"),
        ("keyincrt2", vec![("tls.crt", key_with_blank_line.as_str()), ("tls.key", good_key.as_str())], "CaInvalidPem"),
    ];
    let mut bad_authorities = vec![];
    for (suffix, data, reason) in &bad {
        let name = format!("sec-{run}-{suffix}-src");
        secrets.create(&PostParams::default(), &secret(&name, data)).await.unwrap();
        c.secrets.push(name.clone());
        let a = create_authority(&client, c, &run, suffix, json!({"ca": {"secretRef": {"name": name}}})).await;
        bad_authorities.push((a, *reason));
    }
    // The whole key is planted by us too: a fragment of it is as bad as the key.
    seen.lock().unwrap().keys.insert(good_key.clone(), "the bad-input CA key (whole)".into());
    for (a, reason) in &bad_authorities {
        wait_authority(&client, a, "False", reason).await;
    }

    // Tampering: a foreign key in tls.key and the identity's own key pasted into tls.crt
    // (re-issued), then a removed ca.crt (repaired).
    let id_secrets: Api<Secret> = Api::namespaced(client.clone(), &ns);
    let before = serial(&client, &ns, "id0-mtls").await.unwrap();
    let own_key =
        String::from_utf8(id_secrets.get("id0-mtls").await.unwrap().data.unwrap()["tls.key"].0.clone()).unwrap();
    let (foreign, own) = (ByteString(stray_rsa.clone().into_bytes()), ByteString(own_key.into_bytes()));
    let patch = json!({"data": {"tls.key": foreign, "tls.crt": own}});
    id_secrets.patch("id0-mtls", &PatchParams::default(), &Patch::Merge(patch)).await.unwrap();
    let (cl, nsr, ids_r, before_r) = (&client, &ns, &id_secrets, &before);
    harness::wait_for(WAIT, || async move {
        let now = serial(cl, nsr, "id0-mtls").await?;
        let s = ids_r.get("id0-mtls").await.ok()?;
        let crt = String::from_utf8(s.data.as_ref()?.get("tls.crt")?.0.clone()).ok()?;
        (&now != before_r && crt.contains("BEGIN CERTIFICATE")).then_some(())
    })
    .await
    .expect("tampered Secret re-issued");
    let patch = json!({"data": {"ca.crt": null}});
    id_secrets.patch("id1-mtls", &PatchParams::default(), &Patch::Merge(patch)).await.unwrap();
    harness::wait_for(
        WAIT,
        || async move { ids_r.get("id1-mtls").await.ok()?.data?.contains_key("ca.crt").then_some(()) },
    )
    .await
    .expect("Secret without ca.crt repaired");
    let mut metrics = vec![op.metrics().await];
    op.stop();
    let text_log = op.log.clone();
    eprintln!("part 1 (text logs) done after {:.0?}", began.elapsed());

    // ---- Part 2: JSON logs; the restart resyncs everything, then renewals and a rotation ----
    let mut op = Operator::start("json").await;
    for (i, alg) in ["ECDSA-P256", "Ed25519"].iter().enumerate() {
        let obj: MtlsIdentity = serde_json::from_value(json!({"metadata": {"name": format!("renew{i}")},
            "spec": {"authorityRef": p384, "duration": "1m", "renewBefore": "50s", "privateKey": {"algorithm": alg}}}))
        .unwrap();
        ids.create(&PostParams::default(), &obj).await.unwrap();
    }
    let mut serials: Vec<Vec<String>> = vec![vec![]; 2];
    for i in 0..2 {
        wait_identity_ready(&client, &ns, &format!("renew{i}")).await;
    }
    auths
        .patch(&p384, &PatchParams::default(), &Patch::Merge(json!({"spec": {"rotation": {"trigger": "secrets"}}})))
        .await
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        for (i, list) in serials.iter_mut().enumerate() {
            if let Some(s) = serial(&client, &ns, &format!("renew{i}-mtls")).await
                && list.last() != Some(&s)
            {
                list.push(s);
            }
        }
        let a = authority_json(&client, &p384).await;
        let rotated = a["status"]["rotation"]["phase"] == "Stable" && a["status"]["rotation"]["from"] == 2;
        if rotated && serials.iter().all(|l| l.len() >= 3) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no rotation or renewals in time: serials {serials:?}, status {}",
            a["status"]
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    for i in 0..algs.len() {
        wait_identity_ready(&client, &ns, &format!("id{i}")).await;
    }
    metrics.push(op.metrics().await);
    op.stop();
    let json_log = op.log.clone();
    eprintln!("part 2 (JSON logs, renewals, rotation) done after {:.0?}", began.elapsed());

    // ---- Collect every key and everything that must not hold one ----
    for s in Api::<Secret>::all(client.clone()).list(&ListParams::default()).await.unwrap() {
        note_keys(&seen, &s);
    }
    for a in auths.list(&ListParams::default()).await.unwrap() {
        note_object(&seen, "MtlsAuthority objects", &a);
    }
    for i in Api::<MtlsIdentity>::all(client.clone()).list(&ListParams::default()).await.unwrap() {
        note_object(&seen, "MtlsIdentity objects", &i);
    }
    for e in Api::<k8s_openapi::api::events::v1::Event>::all(client.clone()).list(&ListParams::default()).await.unwrap()
    {
        note_object(&seen, "Events (events.k8s.io/v1)", &e);
    }
    for e in Api::<k8s_openapi::api::core::v1::Event>::all(client.clone()).list(&ListParams::default()).await.unwrap() {
        note_object(&seen, "Events (core/v1)", &e);
    }
    let mut sources: Vec<(String, Vec<u8>)> = vec![
        (format!("operator log, text ({})", text_log.display()), std::fs::read(&text_log).unwrap()),
        (format!("operator log, JSON ({})", json_log.display()), std::fs::read(&json_log).unwrap()),
        ("/metrics".into(), metrics.join("\n").into_bytes()),
    ];
    // Identity Secrets as workloads see them, minus their own key: tls.crt, ca.crt, metadata.
    let mut public = vec![];
    for s in Api::<Secret>::namespaced(client.clone(), &ns).list(&ListParams::default()).await.unwrap() {
        let mut s = s;
        s.metadata.managed_fields = None;
        if let Some(data) = s.data.as_mut() {
            data.remove("tls.key");
        }
        public.push(serde_json::to_string(&s).unwrap());
        for k in ["tls.crt", "ca.crt"] {
            public.push(
                String::from_utf8_lossy(
                    &s.data.as_ref().and_then(|d| d.get(k)).map(|b| b.0.clone()).unwrap_or_default(),
                )
                .into_owned(),
            );
        }
    }
    sources.push(("identity Secrets without tls.key".into(), public.join("\n").into_bytes()));
    let (keys, corpus) = {
        let g = seen.lock().unwrap();
        (g.keys.clone(), g.corpus.clone())
    };
    for (name, objs) in corpus {
        sources.push((name.to_string(), objs.join("\n").into_bytes()));
    }
    let keys: Vec<scan::Key> = keys.iter().flat_map(|(text, label)| scan::keys_in(label, text)).collect();
    let mut kinds: BTreeMap<&str, usize> = BTreeMap::new();
    for k in &keys {
        *kinds.entry(k.kind).or_default() += 1;
    }
    eprintln!("{} private keys collected by kind {kinds:?}", keys.len());
    // 5 CA keys (3 generated, the rotated-in one, the supplied intermediate), 4 bad-input keys,
    // 8 identities' current keys, and the keys they replaced (tamper, rotation, renewals).
    assert!(keys.len() >= 20, "too few keys collected: {}", keys.len());
    for kind in ["EC", "Ed25519", "RSA"] {
        assert!(kinds.get(kind).copied().unwrap_or(0) >= 2, "no {kind} keys parsed: {kinds:?}");
    }
    let index = scan::Index::new(keys);
    eprintln!("{} needles of {} characters", index.needles, scan::WINDOW);

    // ---- Self-check: the search finds a key planted in a copy of the log, in several forms ----
    let plant_keys: Vec<&scan::Key> =
        ["EC", "Ed25519", "RSA"].iter().map(|k| index.keys.iter().find(|x| x.kind == *k).unwrap()).collect();
    let (ec, edk, rsak) = (plant_keys[0], plant_keys[1], plant_keys[2]);
    let body_line = |k: &scan::Key| -> String {
        // A line from the middle: the first lines of an RSA key are its public modulus.
        let pem = pem::encode(&pem::Pem::new("PRIVATE KEY", k.der.clone()));
        let lines: Vec<&str> = pem.lines().collect();
        lines[lines.len() / 2].to_string()
    };
    let plants = [
        // One line of a PEM body in a text log.
        format!("2026-01-01T00:00:00Z DEBUG reconcile: writing key={}\n", body_line(rsak)),
        // A Debug-printed PEM in a JSON log (escaped newlines, escaped again).
        format!(
            "{{\"fields\":{{\"secret\":\"{}\"}}}}\n",
            pem::encode(&pem::Pem::new("X", ec.der.clone())).lines().skip(1).collect::<Vec<_>>().join("\\\\n")
        ),
        // The 32-byte Ed25519 seed alone, hex-encoded.
        format!("seed {}\n", hex::encode(&edk.der[edk.secrets[0].0..edk.secrets[0].1])),
        // A Secret's JSON body: the PEM text base64-encoded, without the BEGIN line.
        format!("body {{\"data\":{{\"k\":\"{}\"}}}}\n", scan::base64(&ec.pem.as_bytes()[ec.body_start / 3 * 3 + 3..])),
        // Markers alone: a PEM header, and a Secret value's base64 that starts with one.
        "-----BEGIN EC PRIVATE KEY-----\n".to_string(),
        format!("{{\"tls.key\":\"{}\"}}\n", scan::base64(b"-----BEGIN RSA PRIVATE KEY-----\nMIIE")),
    ];
    let mut log_copy = std::fs::read(&text_log).unwrap();
    if !log_copy.ends_with(b"\n") {
        log_copy.push(b'\n');
    }
    let planted_from = log_copy.iter().filter(|c| **c == b'\n').count() + 1;
    for p in &plants {
        log_copy.extend_from_slice(p.as_bytes());
    }
    let scratch = tmp.path().join("planted.log");
    std::fs::write(&scratch, &log_copy).unwrap();
    let found = index.scan("planted copy", &std::fs::read(&scratch).unwrap());
    let planted: Vec<&scan::Finding> = found.iter().filter(|f| f.line >= planted_from).collect();
    for (i, k) in [rsak, ec, edk, ec].iter().enumerate() {
        assert!(
            planted.iter().any(|f| f.line == planted_from + i && f.key == k.label),
            "self-check: the search missed planted form {i} of {}; found {planted:#?}",
            k.label
        );
    }
    for (line, marker) in [(4, "marker \"PRIVATE KEY\""), (5, "marker base64(\"-----BEGIN RSA PRIVATE KEY\")")] {
        assert!(
            found.iter().any(|f| f.line == planted_from + line && f.encoding == marker),
            "self-check: the search missed the planted {marker}; found {planted:#?}"
        );
    }
    // And a key (its seed hex) that differs in one bit is not reported.
    let mut flipped = edk.der[edk.secrets[0].0..edk.secrets[0].1].to_vec();
    flipped[10] ^= 1;
    let near_miss = index.scan("near miss", format!("seed {}\n", hex::encode(&flipped[..20])).as_bytes());
    assert!(near_miss.is_empty(), "self-check: a 20-byte fragment with a flipped bit matched: {near_miss:?}");

    // ---- The search ----
    let mut leaks = vec![];
    for (name, text) in &sources {
        eprintln!("searching {name}: {} bytes", text.len());
        assert!(!text.is_empty(), "{name} is empty: nothing was searched");
        leaks.extend(index.scan(name, text));
    }
    // The logs really are at trace level, from the operator's dependencies too.
    for (name, log) in &sources[..2] {
        let log = String::from_utf8_lossy(log);
        for target in ["TRACE", "mtls_operator", "kube_client", "kube_runtime", "hyper_util", "rustls"] {
            assert!(log.contains(target), "no {target} in the {name}: not everything logs at trace");
        }
    }
    eprintln!("searched in {:.0?} in all", began.elapsed());
    assert!(
        leaks.is_empty(),
        "private key material found ({} places):\n{}",
        leaks.len(),
        leaks
            .iter()
            .map(|f| format!("  {} line {}: {} as {}", f.source, f.line, f.key, f.encoding))
            .collect::<Vec<_>>()
            .join("\n")
    );
}
