//! The private-key search: needles from every key, in every encoding, matched over a normalised
//! haystack.

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
const PLAIN_MARKERS: [&str; 4] = ["PRIVATE KEY", "BEGIN EC PRIVATE", "BEGIN RSA PRIVATE", "BEGIN ENCRYPTED PRIVATE"];

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
            // Base64 of a larger blob with the DER inside at any offset (a keystore's base64 in
            // a Secret's JSON): the characters from the first 3-byte boundary on.
            ("base64 of a blob, DER at offset 2 mod 3".into(), b64(&key.der[1..], &id[1..], B64, true)),
            ("base64 of a blob, DER at offset 1 mod 3".into(), b64(&key.der[2..], &id[2..], B64, true)),
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

/// How many bytes of a secret component, verbatim, make a binary finding.
const BINARY_RUN: usize = 16;

impl Index {
    /// Binary data (a file a Secret holds: a keystore, `key.der`): a key's secret components
    /// appear in it verbatim (a run of `BINARY_RUN` bytes from any of them), as in a DER key or
    /// an unencrypted store.
    pub fn scan_binary(&self, source: &str, data: &[u8]) -> Vec<Finding> {
        let mut found = vec![];
        for key in &self.keys {
            let hit = key.secrets.iter().any(|&(s, e)| {
                let part = &key.der[s..e];
                part.len() >= BINARY_RUN
                    && (0..=part.len() - BINARY_RUN)
                        .step_by(BINARY_RUN / 2)
                        .any(|o| data.windows(BINARY_RUN).any(|w| w == &part[o..o + BINARY_RUN]))
            });
            if hit {
                found.push(Finding {
                    source: source.into(),
                    line: 0,
                    key: key.label.clone(),
                    encoding: "raw bytes of its secret".into(),
                });
            }
        }
        found
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
