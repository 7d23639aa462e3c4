//! Tasks on images, end to end with the real binary: an image the test builds from Debian's
//! packages (mmdebstrap) and pushes to a registry on loopback with skopeo, a setup that installs
//! a package from the test's own archive with apt-get, a second task that starts from the
//! cached layer; a devcontainer whose Dockerfile (FROM the registry's image, ENV, WORKDIR,
//! COPY, RUN) and local feature nightshift builds itself, step by step, into cached layers; a
//! repository that names an image on the host's disk, refused.
//!
//! Each test needs host root (the image's files are owned by a shifted range of ids) and the
//! tools `.ci/run` installs; without them it says so and returns.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;
#[path = "../../image/tests/support/mod.rs"]
mod support;

use common::*;
use serde_json::{Value, json};
use support::apt::{IMAGE_PATH, debian_image, pushed_debian_image, ready};

fn of_type<'a>(events: &'a [Value], kind: &str) -> Vec<&'a Value> {
    events.iter().filter(|e| e["type"] == kind).collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_task_on_a_registry_image_installs_a_package_in_setup_and_the_next_starts_from_its_layer()
{
    if !ready() {
        return;
    }
    let work = support::workdir();
    let (layout, archive) = debian_image(work.path());
    let registry = support::Registry::start(None).unwrap();
    let reference = registry.push(&layout, "v1", "team/dev", None).unwrap();
    let port = archive.port;
    let config = format!(
        r#"
[environment]
image = "{reference}"
setup = """
export no_proxy= NO_PROXY=
echo 'deb [trusted=yes] http://127.0.0.1:{port}/ ./' > /etc/apt/sources.list.d/local.list
apt-get update -o Dir::Etc::sourcelist=sources.list.d/local.list -o Dir::Etc::sourceparts=- -o APT::Get::List-Cleanup=0
apt-get install -y --no-install-recommends jq
"""

[network]
setup = ["127.0.0.1:{port}"]

[checks]
jq = "echo '{{\"n\": 41}}' | jq -e '.n == 41'"
"#
    );
    let repo = repo_with(&[(".nightshift.toml", &config), ("README", "hello\n")]);
    let probe = "echo '{\"a\": 41}' | jq .a; echo $IMAGE_MARK; cat /etc/debian_version; \
                 command -v python3 || echo no python3; id -u; echo done > result.txt";
    let steps = json!([
        shell(probe),
        finish("Probe the image"),
        shell(probe),
        finish("Probe the image again"),
    ]);
    let (ns, _server) = Nightshift::with_script(script(steps)).await;
    std::fs::write(
        ns.home.path().join("config.toml"),
        format!("[images]\nplain_http = [\"{}\"]\n", registry.host()),
    )
    .unwrap();
    ns.allow_loopback(&[port]);

    let (out, task) = ns.wait_task(repo.path(), "probe").await;
    let id = task["id"].as_str().unwrap();
    let events = ns.events(id).await;
    assert!(
        out.status.success(),
        "{}\n{}\n{events:#?}",
        stderr(&out),
        stdout(&out)
    );
    let ready_events = of_type(&events, "image_ready");
    assert_eq!(ready_events.len(), 1, "{events:#?}");
    let image = ready_events[0];
    assert_eq!(image["reference"], reference.as_str());
    assert!(image["digest"].as_str().unwrap().starts_with("sha256:"));
    assert_eq!(image["layers"][0]["fetched"], true, "{image}");
    let setup = events
        .iter()
        .find(|e| e["type"] == "command_finished" && e["phase"] == "setup")
        .expect("setup ran");
    assert_eq!(setup["ok"], true, "{setup}");
    let seen = &shell_outputs(&events)[0];
    let lines: Vec<&str> = seen.lines().collect();
    assert_eq!(
        lines[0], "41",
        "jq, installed by setup, runs for the agent: {seen}"
    );
    assert_eq!(
        lines[1], "from-the-image",
        "the image's Env applies: {seen}"
    );
    assert!(lines[2].starts_with("12."), "Debian 12's files: {seen}");
    assert_eq!(
        lines[3], "no python3",
        "nothing of the host's /usr shows through the image: {seen}"
    );
    assert_ne!(lines[4], "0", "the agent is not root: {seen}");
    let check = events
        .iter()
        .find(|e| e["type"] == "command_finished" && e["phase"] == "check")
        .expect("the check ran");
    assert_eq!(
        check["ok"], true,
        "the checks run on the image too: {check}"
    );
    assert!(task["head_commit"].is_string(), "a hand-back: {task}");

    // The second task: the image is in the store, the setup layer in the cache.
    let (out, task) = ns.wait_task(repo.path(), "probe again").await;
    let events = ns.events(task["id"].as_str().unwrap()).await;
    assert!(out.status.success(), "{}\n{events:#?}", stderr(&out));
    let image = of_type(&events, "image_ready")[0];
    assert_eq!(image["layers"][0]["fetched"], false, "{image}");
    let cache = of_type(&events, "setup_cache")[0];
    assert_eq!(cache["hit"], true, "{cache}");
    assert!(
        !events
            .iter()
            .any(|e| e["type"] == "command_finished" && e["phase"] == "setup"),
        "setup did not run again"
    );
    assert!(shell_outputs(&events)[0].starts_with("41\n"));

    // `env explain` finds the same layer the task did.
    let explained = ns
        .run(&["env", "explain", "--repo", path_str(repo.path())])
        .await;
    let explained = stdout(&explained);
    assert!(
        explained.contains("hit: the next task mounts"),
        "{explained}"
    );
    assert!(
        explained.contains(image["digest"].as_str().unwrap()),
        "{explained}"
    );

    // The store lists it, by the reference the task used.
    let listed = ns.json(&["image", "ls", "--json"]).await;
    let listed = listed.as_array().unwrap();
    assert_eq!(listed.len(), 1, "{listed:?}");
    assert_eq!(listed[0]["reference"], reference.as_str());
    assert_eq!(listed[0]["digest"], image["digest"]);

    // The tag moves to an image with one more layer: the setup layer is a miss that says so.
    let extra = support::TarLayer::new()
        .dir("etc/", 0o755)
        .file("etc/motd-extra", b"moved\n", 0o644, 0)
        .finish();
    let extra = support::gzip_layer(work.path(), &extra);
    let (base, _) = support::debian_with_git(&["jq"]).unwrap();
    support::write_layout(
        &layout,
        "v1",
        &[base, extra],
        &[IMAGE_PATH, "IMAGE_MARK=from-the-image"],
    );
    registry.push(&layout, "v1", "team/dev", None).unwrap();
    let steps = json!([shell("cat /etc/motd-extra; jq --version"), finish("again")]);
    let (ns2, _server2) = Nightshift::with_script(script(steps)).await;
    std::fs::copy(
        ns.home.path().join("config.toml"),
        ns2.home.path().join("config.toml"),
    )
    .unwrap();
    // The same home, so the same store and cache: only the model differs.
    let ns2 = Nightshift {
        home: ns.home,
        base_url: ns2.base_url.clone(),
        env: Vec::new(),
    };
    let (out, task) = ns2.wait_task(repo.path(), "after the tag moved").await;
    let events = ns2.events(task["id"].as_str().unwrap()).await;
    assert!(out.status.success(), "{}\n{events:#?}", stderr(&out));
    let cache = of_type(&events, "setup_cache")[0];
    assert_eq!(cache["hit"], false, "{cache}");
    let reasons = cache["reasons"].to_string();
    assert!(reasons.contains("now points at"), "{reasons}");
    let seen = &shell_outputs(&events)[0];
    assert!(seen.starts_with("moved\njq-"), "{seen}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_devcontainer_dockerfile_and_local_feature_are_built_over_a_registry_image_as_cached_steps()
 {
    if !ready() {
        return;
    }
    let work = support::workdir();
    let (registry, reference, _archive) = pushed_debian_image(work.path(), "team/base");
    let dockerfile = format!(
        "FROM {reference}\n\
         ARG FLAVOUR=plain\n\
         ENV TOOL_FLAVOUR=$FLAVOUR\n\
         WORKDIR /opt/tools\n\
         COPY tools/hello.sh /usr/local/bin/hello\n\
         COPY --chown=1000 tools/hello.sh owned.sh\n\
         RUN chmod 755 /usr/local/bin/hello && echo \"built $TOOL_FLAVOUR in $(pwd), owned.sh $(stat -c %u:%g owned.sh)\" > /etc/built-marker\n\
         LABEL team=dev\n\
         CMD [\"bash\"]\n"
    );
    let devcontainer = r#"{
  // comments are allowed, as in every devcontainer.json
  "build": {"dockerfile": "Dockerfile", "context": "..", "args": {"FLAVOUR": "spicy"}},
  "features": {"./greeter": {"greeting": "good evening"}}
}"#;
    let feature = r#"{"id": "greeter", "version": "1.0.0",
  "options": {"greeting": {"type": "string", "default": "hello"}},
  "containerEnv": {"GREETER_INSTALLED": "yes"}}"#;
    let install = "#!/bin/sh\nset -e\nprintf '#!/bin/sh\\necho %s\\n' \"$GREETING\" > /usr/local/bin/greet\nchmod 755 /usr/local/bin/greet\n";
    let repo = repo_with(&[
        (".devcontainer/devcontainer.json", devcontainer),
        (".devcontainer/Dockerfile", &dockerfile),
        (".devcontainer/greeter/devcontainer-feature.json", feature),
        (".devcontainer/greeter/install.sh", install),
        ("tools/hello.sh", "#!/bin/sh\necho hello from COPY\n"),
    ]);
    let probe = "hello; greet; cat /etc/built-marker; echo $TOOL_FLAVOUR $GREETER_INSTALLED; \
                 echo $IMAGE_MARK";
    let steps = json!([
        shell(probe),
        finish("Probe"),
        shell(probe),
        finish("Probe again"),
    ]);
    let (ns, _server) = Nightshift::with_script(script(steps)).await;
    std::fs::write(
        ns.home.path().join("config.toml"),
        format!("[images]\nplain_http = [\"{}\"]\n", registry.host()),
    )
    .unwrap();

    let check = ns
        .run(&["env", "check", "--repo", path_str(repo.path())])
        .await;
    let shown = stdout(&check);
    assert!(check.status.success(), "{}", stderr(&check));
    assert!(
        shown.contains("Dockerfile"),
        "env check shows the build: {shown}"
    );
    assert!(shown.contains("./greeter"), "and the feature: {shown}");

    let (out, task) = ns.wait_task(repo.path(), "probe").await;
    let events = ns.events(task["id"].as_str().unwrap()).await;
    assert!(out.status.success(), "{}\n{events:#?}", stderr(&out));
    let built = of_type(&events, "build_step");
    let steps: Vec<&str> = built.iter().map(|e| e["step"].as_str().unwrap()).collect();
    assert_eq!(steps.len(), 4, "two COPYs, RUN and the feature: {steps:?}");
    assert!(steps[0].contains("COPY"), "{steps:?}");
    assert!(steps[1].contains("COPY --chown"), "{steps:?}");
    assert!(steps[2].contains("RUN"), "{steps:?}");
    assert!(steps[3].contains("greeter"), "{steps:?}");
    assert!(built.iter().all(|e| e["hit"] == false), "{built:?}");
    let seen = &shell_outputs(&events)[0];
    assert_eq!(
        seen.lines().take(5).collect::<Vec<_>>(),
        [
            "hello from COPY",
            "good evening",
            "built spicy in /opt/tools, owned.sh 1000:1000",
            "spicy yes",
            "from-the-image",
        ],
        "{seen}"
    );

    let (out, task) = ns.wait_task(repo.path(), "probe again").await;
    let events = ns.events(task["id"].as_str().unwrap()).await;
    assert!(out.status.success(), "{}\n{events:#?}", stderr(&out));
    let built = of_type(&events, "build_step");
    assert_eq!(built.len(), 4, "{built:?}");
    assert!(
        built.iter().all(|e| e["hit"] == true),
        "every step is cached: {built:?}"
    );
    assert!(shell_outputs(&events)[0].starts_with("hello from COPY\ngood evening\n"));
}

#[tokio::test(flavor = "multi_thread")]
async fn an_unsupported_dockerfile_instruction_fails_the_task_naming_file_line_and_instruction() {
    // No image is needed: the Dockerfile is read before anything is pulled.
    if !nix::unistd::geteuid().is_root() {
        eprintln!("skipped: a task on an image needs nightshift to run as root");
        return;
    }
    let repo = repo_with(&[
        (
            ".devcontainer/devcontainer.json",
            r#"{"build": {"dockerfile": "Dockerfile"}}"#,
        ),
        (
            ".devcontainer/Dockerfile",
            "FROM debian:bookworm\nRUN true\nRUN --mount=type=cache,target=/c make\n",
        ),
    ]);
    let (ns, _server) = Nightshift::with_script(script(json!([finish("never")]))).await;
    let (out, task) = ns.wait_task(repo.path(), "anything").await;
    assert!(!out.status.success());
    assert_eq!(task["state"], "failed", "{task}");
    let message = task["error"].as_str().unwrap_or_default();
    assert!(
        message.contains("Dockerfile:3") && message.contains("RUN") && message.contains("--mount"),
        "{task}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_repository_that_names_an_image_on_the_hosts_disk_is_refused_before_anything_is_read() {
    if !nix::unistd::geteuid().is_root() {
        eprintln!("skipped: a task on an image needs nightshift to run as root");
        return;
    }
    // A file that exists on the host: the refusal must not depend on it being absent.
    let host = tempfile::tempdir().unwrap();
    let secret = host.path().join("private.tar");
    std::fs::write(&secret, "not for the sandbox").unwrap();
    let secret = secret.display().to_string();
    let by_config = repo_with(&[(
        ".nightshift.toml",
        &format!("[environment]\nimage = \"oci-archive:{secret}\"\n"),
    )]);
    let by_devcontainer = repo_with(&[(
        ".devcontainer/devcontainer.json",
        &format!(r#"{{"image": "docker-archive:{secret}"}}"#),
    )]);
    let by_dockerfile = repo_with(&[
        (
            ".devcontainer/devcontainer.json",
            r#"{"build": {"dockerfile": "Dockerfile"}}"#,
        ),
        (
            ".devcontainer/Dockerfile",
            &format!("FROM oci:{}\nRUN true\n", host.path().display()),
        ),
    ]);
    let (ns, _server) = Nightshift::with_script(script(json!([finish("never")]))).await;
    for (repo, origin) in [
        (&by_config, "the repository's image"),
        (&by_devcontainer, "the repository's image"),
        (&by_dockerfile, "the FROM of"),
    ] {
        let (out, task) = ns.wait_task(repo.path(), "anything").await;
        assert!(!out.status.success());
        assert_eq!(task["state"], "failed", "{task}");
        let message = task["error"].as_str().unwrap_or_default();
        assert!(
            message.contains(origin) && message.contains("may only name images in a registry"),
            "{task}"
        );
        let events = ns.events(task["id"].as_str().unwrap()).await;
        assert!(of_type(&events, "image_ready").is_empty(), "{events:#?}");
    }
}

/// Pushes a devcontainer feature (a tar of its folder) to `registry` as an OCI artifact, the
/// way the devcontainer CLI publishes one; returns its reference.
async fn push_feature(registry: &support::Registry, name: &str, files: &[(&str, &str)]) -> String {
    let mut tar = tar::Builder::new(Vec::new());
    for (path, text) in files {
        let mut header = tar::Header::new_gnu();
        header.set_size(text.len() as u64);
        header.set_mode(if path.ends_with(".sh") { 0o755 } else { 0o644 });
        header.set_cksum();
        tar.append_data(&mut header, path, text.as_bytes()).unwrap();
    }
    let layer = tar.into_inner().unwrap();
    let config = b"{}".to_vec();
    let _ = rustls::crypto::ring::default_provider().install_default();
    let http = reqwest::Client::new();
    let base = format!("http://{}/v2/{name}", registry.host());
    for blob in [&config, &layer] {
        let started = http
            .post(format!("{base}/blobs/uploads/"))
            .send()
            .await
            .unwrap();
        assert_eq!(started.status(), 202, "{}", started.text().await.unwrap());
        let location = started.headers()["location"].to_str().unwrap().to_string();
        let location = match location.starts_with('/') {
            true => format!("http://{}{location}", registry.host()),
            false => location,
        };
        let separator = if location.contains('?') { '&' } else { '?' };
        let put = http
            .put(format!(
                "{location}{separator}digest={}",
                support::sha256(blob)
            ))
            .header("content-type", "application/octet-stream")
            .body(blob.clone())
            .send()
            .await
            .unwrap();
        assert_eq!(put.status(), 201, "{}", put.text().await.unwrap());
    }
    let manifest = json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.devcontainers", "digest": support::sha256(&config), "size": config.len()},
        "layers": [{"mediaType": "application/vnd.devcontainers.layer.v1+tar",
                    "digest": support::sha256(&layer), "size": layer.len(),
                    "annotations": {"org.opencontainers.image.title": "devcontainer-feature-stamp.tgz"}}],
    });
    let put = http
        .put(format!("{base}/manifests/1"))
        .header("content-type", "application/vnd.oci.image.manifest.v1+json")
        .body(manifest.to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(put.status(), 201, "{}", put.text().await.unwrap());
    format!("{}/{name}:1", registry.host())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_devcontainer_feature_published_to_a_registry_is_fetched_installed_and_cached() {
    if !ready() {
        return;
    }
    let work = support::workdir();
    let (registry, image, _archive) = pushed_debian_image(work.path(), "team/dev");
    let feature = push_feature(
        &registry,
        "features/stamp",
        &[
            (
                "devcontainer-feature.json",
                r#"{"id": "stamp", "version": "1.0.0", "options": {"word": {"type": "string", "default": "plain"}}}"#,
            ),
            (
                "install.sh",
                "#!/bin/sh\nset -e\nprintf '#!/bin/sh\\necho stamped %s\\n' \"$WORD\" > /usr/local/bin/stamp\nchmod 755 /usr/local/bin/stamp\n",
            ),
        ],
    )
    .await;
    let devcontainer =
        format!(r#"{{"image": "{image}", "features": {{"{feature}": {{"word": "fetched"}}}}}}"#);
    let repo = repo_with(&[(".devcontainer/devcontainer.json", &devcontainer)]);
    let probe = "stamp; ls -A";
    let steps = json!([shell(probe), finish("Probe"), shell(probe), finish("Again")]);
    let (ns, _server) = Nightshift::with_script(script(steps)).await;
    std::fs::write(
        ns.home.path().join("config.toml"),
        format!("[images]\nplain_http = [\"{}\"]\n", registry.host()),
    )
    .unwrap();

    let check = ns
        .run(&["env", "check", "--repo", path_str(repo.path())])
        .await;
    assert!(
        !stdout(&check).contains("not installed"),
        "{}",
        stdout(&check)
    );

    for (round, hit) in [(1, false), (2, true)] {
        let (out, task) = ns.wait_task(repo.path(), "probe").await;
        let events = ns.events(task["id"].as_str().unwrap()).await;
        assert!(out.status.success(), "{}\n{events:#?}", stderr(&out));
        let built = of_type(&events, "build_step");
        assert_eq!(built.len(), 1, "{built:?}");
        assert_eq!(built[0]["step"], format!("feature {feature}"));
        assert_eq!(built[0]["hit"], hit, "round {round}: {built:?}");
        let seen = &shell_outputs(&events)[0];
        assert!(seen.starts_with("stamped fetched\n"), "{seen}");
        assert!(
            !seen.contains(".nightshift-features"),
            "the fetched feature left the working copy before the agent: {seen}"
        );
        assert!(
            task["head_commit"].is_string() || task["no_changes"] == true,
            "{task}"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_registry_login_from_a_stored_secret_pulls_a_private_image() {
    for tool in ["skopeo", "docker-registry", "htpasswd"] {
        if !support::have(tool) {
            eprintln!(
                "skipped: `{tool}` is not installed (apt-get install skopeo docker-registry apache2-utils)"
            );
            return;
        }
    }
    let work = support::workdir();
    let layout = work.path().join("layout");
    support::write_layout(&layout, "v1", &support::tiny_layers(work.path()), &[]);
    let registry = support::Registry::start(Some(("robot", "s3cret-pw"))).unwrap();
    let reference = registry
        .push(&layout, "v1", "team/private", Some("robot:s3cret-pw"))
        .unwrap();
    let ns = Nightshift::new("http://127.0.0.1:9/v1");
    std::fs::write(
        ns.home.path().join("config.toml"),
        format!(
            "[images]\nplain_http = [\"{host}\"]\nlogins = {{ \"{host}\" = \"REGISTRY_LOGIN\" }}\n",
            host = registry.host()
        ),
    )
    .unwrap();
    let set = |value: &str| {
        use std::io::Write;
        let mut child = ns
            .command(&["secret", "set", "REGISTRY_LOGIN", "--all-repos"])
            .stdin(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        child
            .stdin
            .take()
            .unwrap()
            .write_all(format!("{value}\n").as_bytes())
            .unwrap();
        assert!(child.wait_with_output().unwrap().status.success());
    };

    // Not stored yet: said so. A wrong password: the registry refuses.
    let out = ns.run(&["image", "pull", &reference]).await;
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("is not a stored secret"),
        "{}",
        stderr(&out)
    );
    set("robot:wrong");
    let out = ns.run(&["image", "pull", &reference]).await;
    assert!(!out.status.success(), "a wrong password pulls nothing");
    set("robot:s3cret-pw");
    let out = ns.run(&["image", "pull", &reference, "--json"]).await;
    assert!(out.status.success(), "{}", stderr(&out));
    let pulled: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(
        pulled["digest"].as_str().unwrap().starts_with("sha256:"),
        "{pulled}"
    );
}
