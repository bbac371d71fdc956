//! Live configuration changes: a changed rule applies to new events without
//! awarding anyone twice, and an invalid change is kept out.

mod common;

use std::path::Path;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use common::*;
use incentives::config::parse_programs;
use incentives::processor::{self, Reload, Shutdown};
use incentives::telemetry::{Health, Metrics};

const CATALOG_V1: &str = r#"
[incentives.three-days]
description = "Logged data three days in a row"
event = "data_logged"
rule = { kind = "streak", days = 3 }
"#;

const PROGRAMS: &str = r#"
[[programs]]
id = "reload-2026"
employer_id = "acme"
time_zone = "America/New_York"
starts_on = 2026-01-01
ends_on = 2026-12-31

[[programs.incentives]]
incentive = "three-days"
reward = { kind = "points", code = "300", description = "300 points" }
"#;

struct Running {
    shutdown: Shutdown,
    reload: Reload,
    metrics: Arc<Metrics>,
    thread: Option<JoinHandle<Result<(), String>>>,
}

impl Running {
    fn metric(&self, name: &str) -> f64 {
        self.metrics
            .render()
            .lines()
            .find_map(|l| l.strip_prefix(name).and_then(|v| v.trim().parse().ok()))
            .unwrap_or(0.0)
    }

    fn wait_metric(&self, name: &str, value: f64) {
        let deadline = Instant::now() + Duration::from_secs(30);
        while self.metric(name) < value {
            assert!(Instant::now() < deadline, "{name} did not reach {value}");
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        self.shutdown.trigger();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn write_config(dir: &Path, catalog: &str, programs: &str) {
    // Write to a temporary file and rename, as editors and deploy tools do,
    // so the processor never reads a half-written file.
    for (name, text) in [("catalog.toml", catalog), ("programs.toml", programs)] {
        let tmp = dir.join(format!(".{name}.tmp"));
        std::fs::write(&tmp, text).unwrap();
        std::fs::rename(&tmp, dir.join(name)).unwrap();
    }
}

fn start(env: &TestEnv, dir: &Path) -> Running {
    std::fs::copy(
        repo_dir().join("config/incentives.toml"),
        dir.join("incentives.toml"),
    )
    .unwrap();
    write_config(dir, CATALOG_V1, PROGRAMS);
    let mut config = (*env.config).clone();
    config.dir = dir.to_path_buf();
    config.programs = parse_programs(
        &dir.join("catalog.toml"),
        CATALOG_V1,
        &dir.join("programs.toml"),
        PROGRAMS,
    )
    .unwrap();
    config.settings.processor.config_poll_interval = Duration::from_millis(200);
    let (shutdown, reload, metrics) = (
        Shutdown::default(),
        Reload::default(),
        Arc::new(Metrics::new()),
    );
    let (s, r, m, c) = (
        shutdown.clone(),
        reload.clone(),
        metrics.clone(),
        Arc::new(config),
    );
    let thread = std::thread::spawn(move || {
        processor::run_with_reload(c, m, Arc::new(Health::default()), s, r)
            .map_err(|e| e.to_string())
    });
    Running {
        shutdown,
        reload,
        metrics,
        thread: Some(thread),
    }
}

#[test]
fn a_changed_rule_applies_to_new_events_and_never_awards_twice() {
    let env = TestEnv::new("reload", 2);
    let dir = std::env::temp_dir().join(format!(
        "incentives-reload-{}",
        uuid::Uuid::now_v7().simple()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    let p = start(&env, &dir);

    env.publish(
        &(1..=3)
            .map(|d| logged("early", &march(d), None))
            .collect::<Vec<_>>(),
    );
    let first = env.wait_for_awards(1, Duration::from_secs(60));
    assert_eq!(first.len(), 1);
    let v1 = first[0].rule_version.clone();

    // The employer now forgives one missed day: a new definition, a new version.
    let catalog_v2 = CATALOG_V1.replace("days = 3 }", "days = 3, grace_days = 1 }");
    write_config(&dir, &catalog_v2, PROGRAMS);
    p.wait_metric("incentives_config_reloads_total{result=\"applied\"}", 1.0);

    // "early" keeps logging: the rule changed, but its period was decided.
    env.publish(
        &(4..=8)
            .map(|d| logged("early", &march(d), None))
            .collect::<Vec<_>>(),
    );
    // "late" completes only thanks to the new grace day.
    env.publish(
        &[1, 3, 4]
            .iter()
            .map(|&d| logged("late", &march(d), None))
            .collect::<Vec<_>>(),
    );
    let awards = env.wait_for_awards(2, Duration::from_secs(60));
    std::thread::sleep(Duration::from_secs(2));
    let awards = {
        let again = env.all_awards();
        assert!(again.len() >= awards.len());
        again
    };
    assert_eq!(awards.len(), 2, "{awards:#?}");
    let early: Vec<_> = awards.iter().filter(|a| a.user_id == "early").collect();
    assert_eq!(
        early.len(),
        1,
        "no second award for the same program incentive and period"
    );
    assert_eq!(early[0].rule_version, v1);
    let late = awards.iter().find(|a| a.user_id == "late").unwrap();
    assert_ne!(
        late.rule_version, v1,
        "the new rule's version is on its awards"
    );
    assert_eq!(late.evidence_days.len(), 3);
    drop(p);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn an_invalid_change_is_rejected_and_the_old_rules_keep_working() {
    let env = TestEnv::new("reload-bad", 2);
    let dir = std::env::temp_dir().join(format!(
        "incentives-reload-bad-{}",
        uuid::Uuid::now_v7().simple()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    let p = start(&env, &dir);
    p.wait_metric("incentives_assigned_partitions", 1.0);

    // A typo in the zone, saved to disk: rejected.
    write_config(
        &dir,
        CATALOG_V1,
        &PROGRAMS.replace("America/New_York", "America/New_Yrok"),
    );
    p.wait_metric("incentives_config_reloads_total{result=\"rejected\"}", 1.0);
    // A SIGHUP with the file still broken: rejected again.
    p.reload.request();
    p.wait_metric("incentives_config_reloads_total{result=\"rejected\"}", 2.0);
    assert_eq!(
        p.metric("incentives_config_reloads_total{result=\"applied\"}"),
        0.0
    );

    // The running (valid) configuration still decides.
    env.publish(
        &(1..=3)
            .map(|d| logged("steady", &march(d), None))
            .collect::<Vec<_>>(),
    );
    let awards = env.wait_for_awards(1, Duration::from_secs(60));
    assert_eq!(awards.len(), 1);
    assert_eq!(awards[0].program_id, "reload-2026");
    drop(p);
    let _ = std::fs::remove_dir_all(&dir);
}
