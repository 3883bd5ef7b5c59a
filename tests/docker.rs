//! The private Docker engine and the local images, for the tests that run containers
//! (`restore --verify --verify-image`, the testcontainers test).
//!
//! `scripts/test.sh` starts the engine (`scripts/docker-engine.sh start`), exports its
//! `DOCKER_HOST` and builds the images (`scripts/docker-test-images.sh`) before `cargo test`.
//! When the engine or an image is missing, [`engine`] returns `None` after a loud SKIPPED line;
//! under `CI=true` it panics instead: in CI these tests must run.
//!
//! Network rule: every container these tests start has no network but its own loopback
//! (`--network none`) or the host's (`--network host`); nothing talks to another address.

#![allow(dead_code)] // used by the container tests as they land

use std::process::Command;

/// The engine the tests talk to.
#[derive(Debug, Clone)]
pub(crate) struct Engine {
    /// `DOCKER_HOST` of our private engine.
    pub(crate) host: String,
}

/// The locally built PostgreSQL image of `major` (`scripts/docker-test-images.sh`).
pub(crate) fn pg_image(major: u32) -> String {
    format!("pitr-test/postgres:{major}")
}

/// The locally built S3-compatible server image (moto).
#[allow(dead_code)]
pub(crate) const MOTO_IMAGE: &str = "pitr-test/moto:latest";

fn skip_or_fail(what: &str) -> Option<Engine> {
    if std::env::var("CI").as_deref() == Ok("true") {
        panic!(
            "{what} (CI=true: the container tests must run; scripts/test.sh starts the engine and builds the images)"
        );
    }
    eprintln!(
        "******** SKIPPED: {what} (run scripts/test.sh, which starts the engine and builds the images) ********"
    );
    None
}

/// The engine, if it answers and holds every image in `images`; see the module doc.
pub(crate) fn engine(images: &[String]) -> Option<Engine> {
    let Some(host) = std::env::var("DOCKER_HOST").ok().filter(|h| !h.is_empty()) else {
        return skip_or_fail("DOCKER_HOST is not set");
    };
    let e = Engine { host };
    match e
        .docker(&["version", "--format", "{{.Server.Version}}"])
        .output()
    {
        Ok(o) if o.status.success() => {}
        Ok(o) => {
            return skip_or_fail(&format!(
                "no Docker engine answers on {}: {}",
                e.host,
                String::from_utf8_lossy(&o.stderr).trim()
            ));
        }
        Err(err) => return skip_or_fail(&format!("no docker CLI: {err}")),
    }
    for image in images {
        let ok = e
            .docker(&["image", "inspect", "--format", "{{.Id}}", image])
            .output()
            .is_ok_and(|o| o.status.success());
        if !ok {
            return skip_or_fail(&format!("image {image} is not built"));
        }
    }
    Some(e)
}

impl Engine {
    /// A `docker` command for this engine.
    pub(crate) fn docker(&self, args: &[&str]) -> Command {
        let mut c = Command::new("docker");
        c.env("DOCKER_HOST", &self.host)
            .args(args)
            .stdin(std::process::Stdio::null());
        c
    }

    /// Names of the containers (running or not) that carry `label`.
    pub(crate) fn containers_labelled(&self, label: &str) -> Vec<String> {
        let o = self
            .docker(&[
                "ps",
                "-a",
                "--filter",
                &format!("label={label}"),
                "--format",
                "{{.Names}}",
            ])
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        String::from_utf8_lossy(&o.stdout)
            .lines()
            .map(str::to_string)
            .collect()
    }
}
