//! The chart's alerting rules on a real Prometheus server (built from its Go module by
//! e2e/build-prometheus.sh) scraping the real operator on the real control plane: alerts fire for
//! real causes and resolve when the causes are fixed; and every metric a rule or a dashboard panel
//! uses is one the operator exports (checked against scrapes taken through the run). The rules are the shipped file with its waiting times scaled
//! down (`for:` to 1s, the one-hour stall threshold to 5 s): the expressions are the same.

use std::{
    path::PathBuf,
    process::{Child, Command, Stdio},
    time::Duration,
};

use k8s_openapi::api::{
    admissionregistration::v1::{ValidatingAdmissionPolicy, ValidatingAdmissionPolicyBinding},
    core::v1::{ConfigMap, Secret},
};
use kube::{
    Api,
    api::{DeleteParams, Patch, PatchParams, PostParams},
};
use serde_json::{Value, json};

use crate::{
    fixtures::{
        TestAuthority, create_identity, patch_rotation, wait_authority_ready, wait_identity_ready, wait_identity_reason,
    },
    harness::{self, TestNamespace},
};

#[path = "../bench/font.rs"]
mod font;

const RULES: &str = "charts/mtls-operator/rules/mtls-operator.rules.yaml";
const DASHBOARD: &str = "charts/mtls-operator/dashboards/mtls-operator.json";

/// The Prometheus bin directory: $MTLS_E2E_PROMETHEUS_BIN, else what e2e/build-prometheus.sh
/// prints (it builds only what is missing).
fn prometheus_bin() -> PathBuf {
    if let Some(dir) = std::env::var_os("MTLS_E2E_PROMETHEUS_BIN") {
        return PathBuf::from(dir);
    }
    let out = Command::new(harness::repo_root().join("e2e/build-prometheus.sh"))
        .output()
        .expect("run e2e/build-prometheus.sh");
    assert!(out.status.success(), "e2e/build-prometheus.sh failed: {}", String::from_utf8_lossy(&out.stderr));
    PathBuf::from(String::from_utf8_lossy(&out.stdout).trim())
}

/// Metric names in PromQL text: `mtls_operator_...` identifiers.
fn metric_names(text: &str) -> std::collections::BTreeSet<String> {
    let mut found = std::collections::BTreeSet::new();
    for (i, _) in text.match_indices("mtls_operator_") {
        let name: String = text[i..].chars().take_while(|c| c.is_ascii_alphanumeric() || *c == '_').collect();
        found.insert(name);
    }
    found
}

/// The shipped rules, `for:` and the stall threshold scaled down.
fn test_rules() -> String {
    let text = std::fs::read_to_string(harness::repo_root().join(RULES)).unwrap();
    let mut rules: serde_yaml::Value = serde_yaml::from_str(&text).unwrap();
    for group in rules["groups"].as_sequence_mut().unwrap() {
        for rule in group["rules"].as_sequence_mut().unwrap() {
            if rule.get("for").is_some() {
                rule["for"] = "1s".into();
            }
            let expr = rule["expr"].as_str().unwrap().replace("> 3600", "> 5");
            rule["expr"] = expr.into();
        }
    }
    serde_yaml::to_string(&rules).unwrap()
}

struct Prometheus {
    url: String,
    child: Child,
    _dir: tempfile::TempDir,
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Prometheus {
    async fn start(scrape: &str) -> Self {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("rules.yaml"), test_rules()).unwrap();
        let target = scrape.strip_prefix("http://").unwrap();
        let config = format!(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nrule_files: [rules.yaml]\nscrape_configs:\n  - job_name: mtls-operator\n    static_configs:\n      - targets: ['{target}']\n"
        );
        std::fs::write(dir.path().join("prometheus.yml"), config).unwrap();
        let port = harness::free_port();
        let log = std::fs::File::create(dir.path().join("prometheus.log")).unwrap();
        let child = Command::new(prometheus_bin().join("prometheus"))
            .current_dir(dir.path())
            .args([
                "--config.file=prometheus.yml",
                "--storage.tsdb.path=data",
                &format!("--web.listen-address=127.0.0.1:{port}"),
                "--log.level=warn",
            ])
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .stdin(Stdio::null())
            .spawn()
            .expect("start prometheus");
        let url = format!("http://127.0.0.1:{port}");
        let p = Prometheus { url, child, _dir: dir };
        let ready = format!("{}/-/ready", p.url);
        harness::wait_for(Duration::from_secs(30), || {
            let ready = ready.clone();
            async move { harness::http_get(&ready).await.ok().filter(|(c, _)| *c == 200) }
        })
        .await
        .expect("prometheus became ready");
        p
    }

    /// A range query: each series' legend (the panel's legendFormat filled in) and its points.
    async fn query_range(&self, expr: &str, legend: &str, start: f64, end: f64) -> Vec<(String, Vec<(f64, f64)>)> {
        let enc: String = expr
            .bytes()
            .map(|b| {
                if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
                    (b as char).to_string()
                } else {
                    format!("%{b:02X}")
                }
            })
            .collect();
        let url = format!("{}/api/v1/query_range?query={enc}&start={start}&end={end}&step=2", self.url);
        let (code, body) = harness::http_get(&url).await.unwrap();
        assert_eq!(code, 200, "{expr}: {body}");
        let v: Value = serde_json::from_str(&body).unwrap();
        let mut out = vec![];
        for r in v["data"]["result"].as_array().cloned().unwrap_or_default() {
            let mut name = legend.to_string();
            for (k, val) in r["metric"].as_object().cloned().unwrap_or_default() {
                name = name.replace(&format!("{{{{{k}}}}}"), val.as_str().unwrap_or(""));
            }
            let points = r["values"]
                .as_array()
                .unwrap()
                .iter()
                .filter_map(|p| {
                    Some((p[0].as_f64()? - start, p[1].as_str()?.parse::<f64>().ok().filter(|x| x.is_finite())?))
                })
                .collect();
            out.push((name, points));
        }
        out.sort_by(|a, b| a.0.cmp(&b.0));
        out
    }

    async fn alerts(&self) -> Vec<Value> {
        let (code, body) = harness::http_get(&format!("{}/api/v1/alerts", self.url)).await.unwrap();
        assert_eq!(code, 200, "{body}");
        let v: Value = serde_json::from_str(&body).unwrap();
        v["data"]["alerts"].as_array().cloned().unwrap_or_default()
    }

    /// Waits until `alertname` for `authority` is firing (`true`) or gone (`false`).
    async fn wait_alert(&self, alertname: &str, authority: &str, firing: bool) -> Option<Value> {
        let found = harness::wait_for(Duration::from_secs(90), || async {
            let alert = self.alerts().await.into_iter().find(|a| {
                a["labels"]["alertname"] == alertname && a["labels"]["authority"] == authority && a["state"] == "firing"
            });
            match (firing, alert) {
                (true, Some(a)) => Some(Some(a)),
                (false, None) => Some(None),
                _ => None,
            }
        })
        .await;
        found.unwrap_or_else(|| {
            panic!("{alertname} for {authority} did not become {}", if firing { "firing" } else { "resolved" })
        })
    }
}

/// A ValidatingAdmissionPolicy (and its binding) that denies every Secret write in namespaces
/// labelled `mtls-e2e/frozen=<name>`; deleted on drop.
struct FrozenSecrets(String);

impl FrozenSecrets {
    async fn create(client: &kube::Client, name: &str) -> Self {
        let policy: ValidatingAdmissionPolicy = serde_json::from_value(json!({
            "metadata": {"name": format!("frozen-{name}")},
            "spec": {
                "failurePolicy": "Fail",
                "matchConstraints": {"resourceRules": [{"apiGroups": [""], "apiVersions": ["v1"], "operations": ["CREATE", "UPDATE"], "resources": ["secrets"]}]},
                "validations": [{"expression": "false", "message": "Secrets are frozen in this namespace (e2e)"}]
            }
        }))
        .unwrap();
        let binding: ValidatingAdmissionPolicyBinding = serde_json::from_value(json!({
            "metadata": {"name": format!("frozen-{name}")},
            "spec": {
                "policyName": format!("frozen-{name}"),
                "validationActions": ["Deny"],
                "matchResources": {"namespaceSelector": {"matchLabels": {"mtls-e2e/frozen": name}}}
            }
        }))
        .unwrap();
        Api::<ValidatingAdmissionPolicy>::all(client.clone()).create(&PostParams::default(), &policy).await.unwrap();
        Api::<ValidatingAdmissionPolicyBinding>::all(client.clone())
            .create(&PostParams::default(), &binding)
            .await
            .unwrap();
        FrozenSecrets(format!("frozen-{name}"))
    }
}

impl Drop for FrozenSecrets {
    fn drop(&mut self) {
        let name = self.0.clone();
        harness::cleanup(move |client| async move {
            let _ = Api::<ValidatingAdmissionPolicyBinding>::all(client.clone())
                .delete(&name, &DeleteParams::default())
                .await;
            let _ = Api::<ValidatingAdmissionPolicy>::all(client).delete(&name, &DeleteParams::default()).await;
        });
    }
}

/// The metric families of a scrape of the operator (its TYPE lines: a family appears once it has
/// a series).
async fn exported(metrics_url: &str) -> std::collections::BTreeSet<String> {
    let (code, scrape) = harness::http_get(&format!("{metrics_url}/metrics")).await.unwrap();
    assert_eq!(code, 200);
    scrape
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.split_whitespace().next())
        .map(String::from)
        .collect()
}

#[tokio::test]
async fn alerts_fire_for_real_causes_and_resolve() {
    let op = harness::operator().await;
    let client = harness::client().await;
    let prom = Prometheus::start(&op.metrics_url).await;
    let started = now_s();
    // For the dashboard picture: a fleet of short-lived certificates renewing through the run.
    let picture = std::env::var_os("MTLS_E2E_DASHBOARD_PNG").map(PathBuf::from);
    let fleet = match &picture {
        Some(_) => Some(picture_fleet(&client).await),
        None => None,
    };

    // An identity the policy refuses: not Ready (PolicyViolation) until its spec is fixed.
    let auth = TestAuthority::create(&client, "alerts", json!({"rotation": {"propagationDelay": "1s"}})).await;
    let ns = TestNamespace::new(&client, "alerts").await;
    harness::label_namespace(&client, &ns.name, "mtls-e2e/bundle", Some(&auth.name)).await;
    create_identity(
        &client,
        &ns.name,
        "web",
        &auth.name,
        json!({"serviceNames": ["web"], "dnsNames": ["web.example.com"]}),
    )
    .await;
    wait_identity_reason(&client, &ns.name, "web", "PolicyViolation").await;
    let a = prom.wait_alert("MtlsIdentitiesNotReady", &auth.name, true).await.unwrap();
    let mut seen = exported(&op.metrics_url).await;
    assert_eq!(a["labels"]["reason"], "PolicyViolation", "{a:#}");
    assert_eq!(a["labels"]["severity"], "warning");
    assert!(
        a["annotations"]["description"]
            .as_str()
            .unwrap()
            .contains(&format!("kubectl mtls status --authority {}", auth.name)),
        "{a:#}"
    );
    assert!(a["annotations"]["runbook_url"].as_str().unwrap().ends_with("#mtlsidentitiesnotready"));
    let ids: Api<mtls_operator::api::MtlsIdentity> = Api::namespaced(client.clone(), &ns.name);
    ids.patch("web", &PatchParams::default(), &Patch::Merge(json!({"spec": {"dnsNames": null}}))).await.unwrap();
    wait_identity_ready(&client, &ns.name, "web").await;
    prom.wait_alert("MtlsIdentitiesNotReady", &auth.name, false).await;

    // Issuance refused by the API server (an admission policy that denies Secret writes in the
    // namespace while it carries a label): failing renewals, retried with backoff, until it is lifted.
    let frozen = FrozenSecrets::create(&client, &auth.name).await;
    harness::label_namespace(&client, &ns.name, "mtls-e2e/frozen", Some(&auth.name)).await;
    // The policy is in force once a Secret write is refused by it (it takes a moment to load).
    let secrets: Api<Secret> = Api::namespaced(client.clone(), &ns.name);
    harness::wait_for(Duration::from_secs(30), || async {
        let probe: Secret = serde_json::from_value(json!({"metadata": {"generateName": "probe-"}})).unwrap();
        match secrets.create(&PostParams::default(), &probe).await {
            Ok(made) => {
                let _ = secrets.delete(&made.metadata.name.unwrap(), &DeleteParams::default()).await;
                None
            }
            Err(e) => e.to_string().contains("frozen in this namespace").then_some(()),
        }
    })
    .await
    .expect("the admission policy refuses Secret writes");
    create_identity(&client, &ns.name, "quota", &auth.name, json!({"serviceNames": ["quota"]})).await;
    let a = harness::wait_for(Duration::from_secs(90), || async {
        prom.alerts().await.into_iter().find(|a| {
            a["labels"]["alertname"] == "MtlsRenewalsFailing"
                && a["labels"]["name"] == "quota"
                && a["state"] == "firing"
        })
    })
    .await
    .expect("MtlsRenewalsFailing fires for the identity whose Secret is refused");
    assert_eq!(
        (a["labels"]["namespace"].as_str(), a["labels"]["severity"].as_str()),
        (Some(ns.name.as_str()), Some("warning")),
        "{a:#}"
    );
    seen.extend(exported(&op.metrics_url).await);
    harness::label_namespace(&client, &ns.name, "mtls-e2e/frozen", None).await;
    drop(frozen);
    // Retry now rather than at the next backoff (the request `kubectl mtls renew` makes).
    let ask = json!({"metadata": {"annotations": {"mtls.io/renew-requested": "alerts"}}});
    ids.patch("quota", &PatchParams::default(), &Patch::Merge(ask)).await.unwrap();
    wait_identity_ready(&client, &ns.name, "quota").await;
    harness::wait_for(Duration::from_secs(30), || async {
        (!prom
            .alerts()
            .await
            .iter()
            .any(|a| a["labels"]["alertname"] == "MtlsRenewalsFailing" && a["labels"]["name"] == "quota"))
        .then_some(())
    })
    .await
    .expect("MtlsRenewalsFailing resolves once the identity is issued");

    // A rotation held in Preparing by a ConfigMap the operator did not write: stalled, then moving
    // again once it is gone.
    wait_authority_ready(&client, &auth.name).await;
    let held = TestNamespace::new(&client, "alerts-held").await;
    let cm_name = format!("{}-bundle", auth.name);
    let squatter: ConfigMap =
        serde_json::from_value(json!({"metadata": {"name": cm_name}, "data": {"x": "y"}})).unwrap();
    Api::<ConfigMap>::namespaced(client.clone(), &held.name).create(&PostParams::default(), &squatter).await.unwrap();
    harness::label_namespace(&client, &held.name, "mtls-e2e/bundle", Some(&auth.name)).await;
    patch_rotation(&client, &auth.name, json!({"trigger": "alerts-1"})).await;
    let a = prom.wait_alert("MtlsRotationStalled", &auth.name, true).await.unwrap();
    assert!(a["annotations"]["summary"].as_str().unwrap().contains("has not left its phase"), "{a:#}");
    // The rollout alert fires for the same cause (the held namespace lacks the bundle).
    prom.wait_alert("MtlsBundleNotRolledOut", &auth.name, true).await;
    seen.extend(exported(&op.metrics_url).await);
    Api::<ConfigMap>::namespaced(client.clone(), &held.name).delete(&cm_name, &DeleteParams::default()).await.unwrap();
    prom.wait_alert("MtlsRotationStalled", &auth.name, false).await;
    prom.wait_alert("MtlsBundleNotRolledOut", &auth.name, false).await;

    // The operator alerts stay quiet while it runs.
    for name in ["MtlsOperatorDown", "MtlsOperatorNotReady", "MtlsOperatorNoLeader", "MtlsOperatorSplitBrain"] {
        assert!(
            !prom.alerts().await.iter().any(|a| a["labels"]["alertname"] == name),
            "{name} fired: {:#?}",
            prom.alerts().await
        );
    }
    seen.extend(exported(&op.metrics_url).await);
    rules_and_dashboard_use_only(&seen);

    if let (Some(path), Some(_fleet)) = (picture, fleet) {
        // Let the fleet renew a few more times, then draw what Prometheus recorded.
        tokio::time::sleep(Duration::from_secs(120)).await;
        draw_dashboard(&prom, started, now_s(), &path).await;
    }
}

fn now_s() -> f64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs_f64()
}

/// Twelve identities with 1- to 3-minute certificates (renewing every 40 s to 2 min) under an
/// authority of their own, for the picture.
async fn picture_fleet(client: &kube::Client) -> (TestAuthority, TestNamespace) {
    let auth = TestAuthority::create(client, "fleet", json!({"leaf": {"minDuration": "1m"}})).await;
    let ns = TestNamespace::new(client, "fleet").await;
    for i in 0..12 {
        let spec = json!({"serviceNames": [format!("svc{i}")], "duration": format!("{}m", 1 + i % 3)});
        create_identity(client, &ns.name, &format!("svc{i}"), &auth.name, spec).await;
    }
    (auth, ns)
}

/// The dashboard's panels drawn from Prometheus's range queries over the run, with the panels'
/// own queries and legends (charts/mtls-operator/dashboards/mtls-operator.json), into a PNG.
async fn draw_dashboard(prom: &Prometheus, start: f64, end: f64, path: &std::path::Path) {
    use plotters::prelude::*;
    let dashboard: Value =
        serde_json::from_str(&std::fs::read_to_string(harness::repo_root().join(DASHBOARD)).unwrap()).unwrap();
    let wanted = [
        "Time left, soonest 10 certificates",
        "Issuances per second, by kind",
        "Issuance latency",
        "Identities not Ready, by reason",
        "Rotation phase",
        "Trust bundle version",
        "Bundle rollout",
        "Ready and leading",
    ];
    let mut panels = vec![];
    for title in wanted {
        let p = dashboard["panels"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["title"] == title)
            .unwrap_or_else(|| panic!("no panel {title}"));
        let mut series = vec![];
        for t in p["targets"].as_array().unwrap() {
            series.extend(
                prom.query_range(t["expr"].as_str().unwrap(), t["legendFormat"].as_str().unwrap(), start, end).await,
            );
        }
        let unit = p["fieldConfig"]["defaults"]["unit"].as_str().unwrap_or("").to_string();
        panels.push((title, p["type"].as_str().unwrap().to_string(), unit, series));
    }
    font::load_font().unwrap();
    let root = BitMapBackend::new(path, (1600, 1760)).into_drawing_area();
    root.fill(&WHITE).unwrap();
    let (header, body) = root.split_vertically(60);
    header
        .draw(&Text::new(
            format!("mtls-operator dashboard, {:.0} s of a real run (e2e/tests/alerts.rs)", end - start),
            (20, 15),
            ("sans-serif", 26).into_font(),
        ))
        .unwrap();
    let areas = body.split_evenly((4, 2));
    let span = end - start;
    for ((title, kind, unit, series), area) in panels.iter().zip(areas.iter()) {
        let area = area.margin(10, 10, 10, 10);
        let raw_max = series.iter().flat_map(|(_, p)| p.iter().map(|(_, v)| *v)).fold(0.0f64, f64::max);
        let minutes = unit == "s" && raw_max > 600.0;
        let scale = |v: f64| match unit.as_str() {
            "s" if minutes => v / 60.0,
            "percentunit" => v * 100.0,
            _ => v,
        };
        let unit_label = match unit.as_str() {
            "s" if minutes => " (minutes)",
            "s" => " (seconds)",
            "percentunit" => " (%)",
            "ops" => " (/s)",
            _ => "",
        };
        if kind == "state-timeline" {
            // One row per authority, coloured by the phase it is in.
            let phases = ["Stable", "Preparing", "Propagating", "Reissuing", "Draining", "Retiring"];
            let mut rows: Vec<String> = series.iter().map(|(n, _)| n.split(": ").next().unwrap().to_string()).collect();
            rows.sort();
            rows.dedup();
            let mut chart = ChartBuilder::on(&area)
                .caption(*title, ("sans-serif", 20))
                .x_label_area_size(30)
                .y_label_area_size(150)
                .build_cartesian_2d(0.0..span, 0.0..rows.len().max(1) as f64)
                .unwrap();
            chart.configure_mesh().disable_y_mesh().y_labels(0).x_desc("seconds").draw().unwrap();
            // Each row's name beside it (the axis would label the rows' edges, not their middles).
            let (_, ys) = chart.plotting_area().get_pixel_range();
            let base = area.get_base_pixel();
            let rows_n = rows.len().max(1) as f64;
            for (i, row) in rows.iter().enumerate() {
                let y = ys.start + ((ys.end - ys.start) as f64 * (1.0 - (i as f64 + 0.5) / rows_n)) as i32 - base.1;
                area.draw(&Text::new(row.clone(), (5, y - 7), ("sans-serif", 13).into_font())).unwrap();
            }
            for (name, points) in series {
                let (row, phase) = name.split_once(": ").unwrap_or((name, ""));
                let y = rows.iter().position(|r| r == row).unwrap() as f64;
                let colour = Palette99::pick(phases.iter().position(|p| *p == phase).unwrap_or(9));
                for (t, _) in points {
                    chart
                        .draw_series(std::iter::once(Rectangle::new(
                            [(*t, y + 0.15), (t + 2.0, y + 0.85)],
                            colour.filled(),
                        )))
                        .unwrap();
                }
            }
            for (i, p) in phases.iter().enumerate() {
                chart
                    .draw_series(std::iter::once(Rectangle::new(
                        [(0.0, -1.0), (0.0, -1.0)],
                        Palette99::pick(i).filled(),
                    )))
                    .unwrap()
                    .label(*p)
                    .legend(move |(x, y)| Rectangle::new([(x, y - 5), (x + 10, y + 5)], Palette99::pick(i).filled()));
            }
            chart.configure_series_labels().background_style(WHITE.mix(0.8)).border_style(BLACK).draw().unwrap();
            continue;
        }
        let ymax = scale(raw_max).max(1e-3) * 1.15;
        let mut chart = ChartBuilder::on(&area)
            .caption(format!("{title}{unit_label}"), ("sans-serif", 20))
            .x_label_area_size(30)
            .y_label_area_size(60)
            .build_cartesian_2d(0.0..span, 0.0..ymax)
            .unwrap();
        chart.configure_mesh().x_desc("seconds").draw().unwrap();
        for (i, (name, points)) in series.iter().enumerate().take(10) {
            let colour = Palette99::pick(i);
            chart
                .draw_series(LineSeries::new(points.iter().map(|(t, v)| (*t, scale(*v))), colour.stroke_width(2)))
                .unwrap()
                .label(name.clone())
                .legend(move |(x, y)| PathElement::new([(x, y), (x + 15, y)], colour.stroke_width(2)));
            // Dots too: a series seen for a moment has too few points for a line.
            chart
                .draw_series(points.iter().map(|(t, v)| Circle::new((*t, scale(*v)), 2, Palette99::pick(i).filled())))
                .unwrap();
        }
        if !series.is_empty() {
            chart
                .configure_series_labels()
                .background_style(WHITE.mix(0.8))
                .border_style(BLACK)
                .label_font(("sans-serif", 12))
                .draw()
                .unwrap();
        }
    }
    root.present().unwrap();
    eprintln!("dashboard picture written to {}", path.display());
}

/// Every metric a rule or a dashboard panel uses is in a real scrape of the operator: `seen`, the
/// families of scrapes taken through the test (each family appears once it has a series: the
/// not-Ready one while an identity is not Ready, the failures while issuance fails).
fn rules_and_dashboard_use_only(seen: &std::collections::BTreeSet<String>) {
    assert!(seen.len() >= 20, "{seen:?}");
    let root = harness::repo_root();
    let rules = std::fs::read_to_string(root.join(RULES)).unwrap();
    let dashboard: Value = serde_json::from_str(&std::fs::read_to_string(root.join(DASHBOARD)).unwrap()).unwrap();
    let exprs: Vec<String> = dashboard["panels"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|p| p["targets"].as_array().cloned().unwrap_or_default())
        .map(|t| t["expr"].as_str().unwrap().to_string())
        .collect();
    assert!(exprs.len() >= 15, "the dashboard has {} queries", exprs.len());
    let used: Vec<String> =
        metric_names(&rules).into_iter().chain(exprs.iter().flat_map(|e| metric_names(e))).collect();
    assert!(used.len() >= 15, "{used:?}");
    for name in used {
        // Counters are exposed as NAME_total, histograms as NAME_bucket/_sum/_count.
        let family = ["_total", "_bucket", "_sum", "_count"]
            .iter()
            .find_map(|s| name.strip_suffix(s).filter(|f| seen.contains(*f)))
            .unwrap_or(&name);
        assert!(
            seen.contains(family),
            "{name} is used by a rule or panel but was not in any scrape; scraped: {seen:?}"
        );
    }
}
