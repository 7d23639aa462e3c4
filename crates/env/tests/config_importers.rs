#![allow(clippy::unwrap_used, clippy::expect_used)]

//! Importers: other tools' environment files, read when there is no `.nightshift.toml`.

use std::path::{Path, PathBuf};

use nightshift_env::config::{
    ConfigSource, EnvConfig, Importer, Loaded, Origin, WarningKind, describe,
};

fn write(root: &Path, relative: &str, text: &str) {
    let path = root.join(relative);
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, text).unwrap();
}

fn warnings_of(loaded: &Loaded, kind: WarningKind) -> Vec<String> {
    loaded
        .warnings
        .iter()
        .filter(|warning| warning.kind == kind)
        .map(ToString::to_string)
        .collect()
}

const DEVCONTAINER: &str = r#"// For format details, see https://aka.ms/devcontainer.json.
{
  "name": "Node.js & PostgreSQL",
  "image": "mcr.microsoft.com/devcontainers/typescript-node:1-20-bullseye",
  "features": {
    "ghcr.io/devcontainers/features/docker-in-docker:2": {},
    "https://example.com/features/devcontainer-feature-tool.tgz": {},
    "ftp://example.com/features/old.tgz": {},
  },
  /* Lifecycle commands, in the order they run. */
  "onCreateCommand": "npm ci",
  "updateContentCommand": ["npm", "run", "build:types", "--", "--out dir"],
  "postCreateCommand": {
    "db": "scripts/init-db.sh",
    "hooks": ["git", "config", "core.hooksPath", ".githooks"],
  },
  "postStartCommand": "npm run migrate",
  "containerEnv": {
    "NODE_ENV": "development",
    "DATABASE_URL": "postgres://localhost/dev", // overridden below
  },
  "remoteEnv": {
    "PATH": "${containerEnv:PATH}:/workspace/bin",
    "NODE_ENV": "test",
    "DATABASE_URL": null,
  },
  "forwardPorts": [3000],
}
"#;

#[test]
fn devcontainer_lifecycle_commands_become_setup_and_maintenance() {
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), ".devcontainer/devcontainer.json", DEVCONTAINER);
    let loaded = EnvConfig::load(dir.path()).unwrap();
    let file = PathBuf::from(".devcontainer/devcontainer.json");
    assert_eq!(
        loaded.source,
        ConfigSource::Imported {
            importer: Importer::Devcontainer,
            path: file.clone()
        }
    );
    let environment = &loaded.config.environment;
    assert_eq!(
        environment.setup.as_deref(),
        Some(
            "npm ci\nnpm run build:types -- '--out dir'\n# db\nscripts/init-db.sh\n# hooks\ngit config core.hooksPath .githooks"
        )
    );
    assert_eq!(environment.maintenance.as_deref(), Some("npm run migrate"));
    assert_eq!(
        environment.env["NODE_ENV"], "test",
        "remoteEnv wins over containerEnv"
    );
    assert!(
        !environment.env.contains_key("DATABASE_URL"),
        "null in remoteEnv unsets"
    );
    assert_eq!(
        environment.env["PATH"],
        "${containerEnv:PATH}:/workspace/bin"
    );

    assert_eq!(
        loaded.origin("environment.setup"),
        Some(&Origin::Imported {
            importer: Importer::Devcontainer,
            path: file.clone(),
            field: "onCreateCommand + updateContentCommand + postCreateCommand".into(),
        })
    );
    assert_eq!(
        loaded.origin("environment.env.NODE_ENV"),
        Some(&Origin::Imported {
            importer: Importer::Devcontainer,
            path: file,
            field: "remoteEnv.NODE_ENV".into(),
        })
    );

    assert_eq!(
        environment.image.as_deref(),
        Some("mcr.microsoft.com/devcontainers/typescript-node:1-20-bullseye")
    );
    let unsupported = warnings_of(&loaded, WarningKind::Unsupported);
    assert_eq!(unsupported.len(), 1, "{unsupported:#?}");
    assert!(unsupported[0].contains("ftp://example.com/features/old.tgz"));
    assert!(unsupported[0].contains("or tarball URLs"));
    let build = environment.build.as_ref().expect("a feature to install");
    let ids: Vec<&str> = build.features.iter().map(|f| f.id.as_str()).collect();
    assert_eq!(
        ids,
        [
            "ghcr.io/devcontainers/features/docker-in-docker:2",
            "https://example.com/features/devcontainer-feature-tool.tgz"
        ]
    );
    let suspicious = warnings_of(&loaded, WarningKind::Suspicious);
    assert_eq!(suspicious.len(), 1, "{suspicious:#?}");
    assert!(suspicious[0].contains("remoteEnv.PATH"));

    let text = describe(&loaded);
    assert!(
        text.contains(
            "source: .devcontainer/devcontainer.json (imported by the devcontainer importer"
        ),
        "{text}"
    );
    assert!(
        text.contains("environment.maintenance = \"npm run migrate\"  (.devcontainer/devcontainer.json (postStartCommand))"),
        "{text}"
    );
}

#[test]
fn a_root_devcontainer_json_is_found_too() {
    let dir = tempfile::tempdir().unwrap();
    write(
        dir.path(),
        ".devcontainer.json",
        r#"{ "postCreateCommand": "make deps" }"#,
    );
    let loaded = EnvConfig::load(dir.path()).unwrap();
    assert_eq!(
        loaded.config.environment.setup.as_deref(),
        Some("make deps")
    );
    assert!(loaded.warnings.is_empty(), "{:?}", loaded.warnings);
}

const COPILOT: &str = r#"name: "Copilot Setup Steps"
on:
  workflow_dispatch:
  push:
    paths:
      - .github/workflows/copilot-setup-steps.yml

env:
  CI: "true"

jobs:
  # The job must be called `copilot-setup-steps` or Copilot will not pick it up.
  copilot-setup-steps:
    runs-on: ubuntu-latest
    permissions:
      contents: read
    env:
      NODE_OPTIONS: --max-old-space-size=4096
    steps:
      - name: Checkout code
        uses: actions/checkout@v5

      - name: Set up Node.js
        uses: actions/setup-node@v4
        with:
          node-version: "20"
          cache: "npm"

      - name: Install JavaScript dependencies
        run: npm ci

      - name: Install Python tools
        working-directory: tools
        env:
          PIP_DISABLE_PIP_VERSION_CHECK: 1
          GH_TOKEN: ${{ secrets.GH_TOKEN }}
        run: |
          python -m pip install -r requirements.txt
          python -m pip install -e .

      - name: Windows only
        shell: pwsh
        run: Write-Host hi

      - uses: astral-sh/setup-uv@v6
"#;

#[test]
fn copilot_setup_steps_run_steps_become_setup() {
    let dir = tempfile::tempdir().unwrap();
    write(
        dir.path(),
        ".github/workflows/copilot-setup-steps.yml",
        COPILOT,
    );
    let loaded = EnvConfig::load(dir.path()).unwrap();
    assert!(matches!(
        loaded.source,
        ConfigSource::Imported {
            importer: Importer::CopilotSetupSteps,
            ..
        }
    ));
    let environment = &loaded.config.environment;
    assert_eq!(
        environment.setup.as_deref(),
        Some(
            "# step 3: Install JavaScript dependencies\nnpm ci\n# step 4: Install Python tools\n(\ncd tools || exit\npython -m pip install -r requirements.txt\npython -m pip install -e .\n)"
        )
    );
    assert_eq!(environment.maintenance, None);
    assert_eq!(environment.env["CI"], "true");
    assert_eq!(environment.env["NODE_OPTIONS"], "--max-old-space-size=4096");
    assert_eq!(environment.env["PIP_DISABLE_PIP_VERSION_CHECK"], "1");
    assert!(
        !environment.env.contains_key("GH_TOKEN"),
        "expressions are not set literally"
    );

    match loaded.origin("environment.setup") {
        Some(Origin::Imported { field, .. }) => {
            assert_eq!(field, "jobs.copilot-setup-steps: run steps 3, 4")
        }
        other => panic!("{other:?}"),
    }

    let unsupported = warnings_of(&loaded, WarningKind::Unsupported);
    assert_eq!(unsupported.len(), 3, "{unsupported:#?}");
    assert!(
        unsupported[0].contains("step 2: Set up Node.js uses the action `actions/setup-node@v4`")
    );
    assert!(unsupported[1].contains("runs in `pwsh`"));
    assert!(unsupported[2].contains("`astral-sh/setup-uv@v6`"));
    assert!(
        unsupported
            .iter()
            .all(|warning| !warning.contains("actions/checkout"))
    );
    let suspicious = warnings_of(&loaded, WarningKind::Suspicious);
    assert_eq!(suspicious.len(), 1, "{suspicious:#?}");
    assert!(suspicious[0].contains("steps[3].env.GH_TOKEN"));
}

#[test]
fn cursor_environment_json_install_and_start() {
    let dir = tempfile::tempdir().unwrap();
    write(
        dir.path(),
        ".cursor/environment.json",
        r#"{
  "snapshot": "snapshot-20250301-4f1b7c2e",
  "install": "npm install && pip install -r requirements.txt",
  "start": "sudo service docker start",
  "env": { "NODE_ENV": "development" },
  "terminals": [
    { "name": "Dev server", "command": "npm run dev" }
  ]
}"#,
    );
    let loaded = EnvConfig::load(dir.path()).unwrap();
    let environment = &loaded.config.environment;
    assert_eq!(
        environment.setup.as_deref(),
        Some("npm install && pip install -r requirements.txt")
    );
    assert_eq!(
        environment.maintenance.as_deref(),
        Some("sudo service docker start")
    );
    assert_eq!(environment.env["NODE_ENV"], "development");
    assert_eq!(
        loaded.origin("environment.setup"),
        Some(&Origin::Imported {
            importer: Importer::Cursor,
            path: ".cursor/environment.json".into(),
            field: "install".into(),
        })
    );
    let unsupported = warnings_of(&loaded, WarningKind::Unsupported);
    assert_eq!(unsupported.len(), 2, "{unsupported:#?}");
    assert!(unsupported[0].contains("`snapshot` is not used"));
    assert!(unsupported[1].contains("`terminals` is not used"));
}

#[test]
fn nightshift_toml_wins_over_importers() {
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), ".devcontainer/devcontainer.json", DEVCONTAINER);
    write(
        dir.path(),
        ".github/workflows/copilot-setup-steps.yml",
        COPILOT,
    );
    write(
        dir.path(),
        ".nightshift.toml",
        "[environment]\nsetup = \"make deps\"\n",
    );
    let loaded = EnvConfig::load(dir.path()).unwrap();
    assert!(matches!(loaded.source, ConfigSource::File { .. }));
    assert_eq!(
        loaded.config.environment.setup.as_deref(),
        Some("make deps")
    );
    assert_eq!(loaded.config.environment.maintenance, None);
    assert!(loaded.config.environment.env.is_empty());
    assert!(loaded.warnings.is_empty(), "{:?}", loaded.warnings);
}

#[test]
fn the_first_importer_wins_and_the_rest_are_reported() {
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), ".devcontainer/devcontainer.json", DEVCONTAINER);
    write(
        dir.path(),
        ".github/workflows/copilot-setup-steps.yml",
        COPILOT,
    );
    let loaded = EnvConfig::load(dir.path()).unwrap();
    assert!(matches!(
        loaded.source,
        ConfigSource::Imported {
            importer: Importer::CopilotSetupSteps,
            ..
        }
    ));
    assert_eq!(
        loaded.config.environment.maintenance, None,
        "nothing merged from devcontainer"
    );
    let shadowed = warnings_of(&loaded, WarningKind::Shadowed);
    assert_eq!(
        shadowed,
        [
            ".devcontainer/devcontainer.json: not used: .github/workflows/copilot-setup-steps.yml takes precedence (write a .nightshift.toml to choose exactly)"
        ]
    );
}

#[test]
fn malformed_importer_files_are_warnings_naming_file_and_position() {
    let dir = tempfile::tempdir().unwrap();
    write(
        dir.path(),
        ".github/workflows/copilot-setup-steps.yml",
        "jobs:\n  copilot-setup-steps:\n    steps:\n      - run: npm ci\n     - run: [unclosed\n",
    );
    write(
        dir.path(),
        ".cursor/environment.json",
        r#"{ "install": "npm ci" }"#,
    );
    let loaded = EnvConfig::load(dir.path()).unwrap();
    let malformed: Vec<_> = loaded
        .warnings
        .iter()
        .filter(|warning| warning.kind == WarningKind::MalformedImport)
        .collect();
    assert_eq!(malformed.len(), 1, "{:?}", loaded.warnings);
    assert_eq!(
        malformed[0].file,
        Path::new(".github/workflows/copilot-setup-steps.yml")
    );
    assert!(malformed[0].line.is_some() && malformed[0].column.is_some());
    assert!(
        malformed[0].to_string().contains("is not valid YAML"),
        "{}",
        malformed[0]
    );
    // The next importer is used instead.
    assert!(matches!(
        loaded.source,
        ConfigSource::Imported {
            importer: Importer::Cursor,
            ..
        }
    ));
    assert_eq!(loaded.config.environment.setup.as_deref(), Some("npm ci"));

    let dir = tempfile::tempdir().unwrap();
    write(
        dir.path(),
        ".devcontainer/devcontainer.json",
        "{\n  \"postCreateCommand\": \"make\"\n  \"image\": \n}\n",
    );
    let loaded = EnvConfig::load(dir.path()).unwrap();
    assert_eq!(loaded.source, ConfigSource::Defaults);
    assert_eq!(loaded.warnings.len(), 1, "{:?}", loaded.warnings);
    let warning = &loaded.warnings[0];
    assert_eq!(warning.kind, WarningKind::MalformedImport);
    assert_eq!(warning.line, Some(4), "{warning}");
    assert!(
        warning
            .to_string()
            .starts_with(".devcontainer/devcontainer.json:4:"),
        "{warning}"
    );

    let dir = tempfile::tempdir().unwrap();
    write(
        dir.path(),
        ".github/workflows/copilot-setup-steps.yml",
        "jobs:\n  build:\n    steps: []\n",
    );
    let loaded = EnvConfig::load(dir.path()).unwrap();
    assert_eq!(loaded.source, ConfigSource::Defaults);
    assert!(
        loaded.warnings[0]
            .message
            .contains("has no `jobs.copilot-setup-steps` job")
    );
}

#[test]
fn devcontainer_remote_user_over_container_user_is_who_the_agent_runs_as() {
    let cases = [
        (
            r#"{"image": "debian", "containerUser": "node", "remoteUser": "vscode"}"#,
            Some(("vscode", "remoteUser")),
            0,
        ),
        (
            r#"{"image": "debian", "containerUser": "1000:1000"}"#,
            Some(("1000:1000", "containerUser")),
            0,
        ),
        (r#"{"image": "debian", "remoteUser": 5}"#, None, 1),
        (r#"{"image": "debian"}"#, None, 0),
    ];
    for (text, expected, suspicious) in cases {
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), ".devcontainer/devcontainer.json", text);
        let loaded = EnvConfig::load(dir.path()).unwrap();
        let user = loaded.config.environment.user.as_deref();
        assert_eq!(user, expected.map(|(user, _)| user), "{text}");
        if let Some((_, field)) = expected {
            assert_eq!(
                loaded.origin("environment.user"),
                Some(&Origin::Imported {
                    importer: Importer::Devcontainer,
                    path: PathBuf::from(".devcontainer/devcontainer.json"),
                    field: field.into(),
                }),
                "{text}"
            );
            assert!(describe(&loaded).contains("environment.user"), "{text}");
        }
        assert_eq!(
            warnings_of(&loaded, WarningKind::Suspicious).len(),
            suspicious,
            "{text}"
        );
    }
}
