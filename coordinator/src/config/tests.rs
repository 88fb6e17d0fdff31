use clap::Parser;

use super::*;

#[derive(Debug, clap::Parser)]
struct Cli {
    #[command(flatten)]
    options: Options,
}

/// The options of `args`; `--allow-anonymous` is added so that the default listen address
/// (all interfaces) passes without tokens or mTLS ([`anonymous_on_a_public_address_is_refused`]
/// tests that rule itself).
fn parse(args: &[&str]) -> Options {
    let args = std::iter::once("coordinator").chain(args.iter().copied()).chain(["--allow-anonymous"]);
    Cli::try_parse_from(args).unwrap().options
}

#[test]
fn anonymous_on_a_public_address_is_refused() {
    let options = |args: &[&str]| {
        Cli::try_parse_from(std::iter::once("coordinator").chain(args.iter().copied())).unwrap().options
    };
    let error = format!("{:#}", options(&[]).into_config().unwrap_err());
    assert!(error.contains("--allow-anonymous") && error.contains("--tokens-file"), "{error}");
    assert!(options(&["--listen", "127.0.0.1:4433"]).into_config().is_ok(), "loopback needs no credentials");
    assert!(options(&["--listen", "[::1]:4433"]).into_config().is_ok());
    assert!(options(&["--allow-anonymous"]).into_config().is_ok());
    assert!(options(&["--client-ca", "ca.pem"]).into_config().is_ok(), "mutual TLS is enough");
}

#[test]
fn durations_parse_in_several_units() {
    let parse = |s: &str| s.parse::<HumanDuration>().map(|d| d.0);
    assert_eq!(parse("30s"), Ok(Duration::from_secs(30)));
    assert_eq!(parse("250ms"), Ok(Duration::from_millis(250)));
    assert_eq!(parse("2m"), Ok(Duration::from_secs(120)));
    assert_eq!(parse("1.5"), Ok(Duration::from_millis(1500)));
    assert!(parse("3 fortnights").is_err());
    assert!(parse("").is_err());
}

#[test]
fn flags_override_the_file_and_defaults_fill_the_rest() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("coordinator.toml");
    std::fs::write(
        &file,
        "listen = \"127.0.0.1:5000\"\nmin-clients = 5\nround-deadline = \"3s\"\ninputs = 4\nclasses = 3\nwidth = 8\nno-input-head = true\n",
    )
    .unwrap();
    let mut options = parse(&["--min-clients", "7", "--width", "16"]);
    options.config = Some(file);
    let config = options.resolve().unwrap();
    assert_eq!(config.listen, "127.0.0.1:5000".parse().unwrap());
    assert_eq!(config.rounds.min_clients, 7);
    assert_eq!(config.rounds.round_deadline, Duration::from_secs(3));
    assert_eq!(config.rounds.round_interval, Duration::ZERO);
    let spec = config.spec.unwrap();
    let spec = spec.hbp().unwrap();
    assert_eq!((spec.inputs, spec.classes, spec.width, spec.hidden_layers, spec.input_head), (4, 3, 16, 19, false));
    assert_eq!(config.max_frame, FrameLimit::new(64 << 20));
    assert_eq!(config.tls, TlsSource::Dev { extra_names: vec![] });
}

#[test]
fn unknown_keys_and_bad_values_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("bad.toml");
    std::fs::write(&file, "min-clientz = 3\n").unwrap();
    let options = Options { config: Some(file), ..Options::default() };
    let message = format!("{:#}", options.resolve().unwrap_err());
    assert!(message.contains("min-clientz"), "{message}");
    assert!(parse(&["--sample-fraction", "1.5"]).into_config().is_err());
    assert!(parse(&["--inputs", "3"]).into_config().is_err());
    assert!(parse(&["--max-frame-mib", "5000"]).into_config().is_err());
}

#[test]
fn tokens_skip_blanks_and_comments() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tokens");
    std::fs::write(&path, "# fleet tokens\n alpha \n\nbeta\n").unwrap();
    let tokens = read_tokens(&path).unwrap();
    assert_eq!(tokens.into_iter().collect::<Vec<_>>(), ["alpha", "beta"]);
    std::fs::write(&path, "# nothing\n").unwrap();
    assert!(read_tokens(&path).is_err());
}

#[test]
fn strategy_flags_and_keys_select_and_configure_the_aggregation() {
    use flotilla_protocol::aggregate::StrategyKind;
    let config = parse(&["--strategy", "fedadam", "--server-lr", "0.1", "--beta2", "0.9", "--clip-norm", "5"])
        .into_config()
        .unwrap();
    let aggregation = config.rounds.aggregation;
    assert_eq!(aggregation.kind, StrategyKind::FedAdam);
    assert_eq!((aggregation.server_lr, aggregation.beta1, aggregation.beta2, aggregation.tau), (0.1, 0.9, 0.9, 1e-3));
    assert_eq!((aggregation.clip_norm, aggregation.outlier_norm), (Some(5.0), None));
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("coordinator.toml");
    std::fs::write(&file, "strategy = \"multi-krum\"\nbyzantine = 1\nmulti-krum-m = 3\nmin-clients = 5\n").unwrap();
    let options = Options { config: Some(file), ..parse(&["--max-held-updates", "64"]) };
    let aggregation = options.resolve().unwrap().rounds.aggregation;
    assert_eq!(aggregation.kind, StrategyKind::MultiKrum);
    assert_eq!((aggregation.byzantine, aggregation.multi_krum_m, aggregation.max_held_updates), (1, Some(3), 64));
    // Nothing named: the recommended defaults, from the one place that holds them.
    let defaults = parse(&[]).into_config().unwrap().rounds.aggregation;
    assert_eq!(defaults, flotilla_protocol::aggregate::StrategyConfig::recommended());
    assert_eq!((defaults.kind, defaults.beta1), (StrategyKind::FedAvgM, 0.5));
    let config =
        parse(&["--server-step", "fedexp", "--serve-average", "0", "--strategy", "fedavg"]).into_config().unwrap();
    let aggregation = config.rounds.aggregation;
    assert_eq!(
        (aggregation.step_size, aggregation.serve_average),
        (flotilla_protocol::aggregate::StepSize::FedExp, 0.0)
    );
    let error = format!("{:#}", parse(&["--serve-average", "1"]).into_config().unwrap_err());
    assert!(error.contains("serve_average"), "{error}");
    let unknown = Cli::try_parse_from(["coordinator", "--server-step", "huge"]).unwrap_err().to_string();
    assert!(unknown.contains("unknown server step"), "{unknown}");
}

#[test]
fn strategy_options_are_checked_against_the_strategy_and_their_ranges() {
    let error = |args: &[&str]| format!("{:#}", parse(args).into_config().unwrap_err());
    assert!(error(&["--trim-fraction", "0.2"]).contains("--trim-fraction does not apply to --strategy fedavgm"));
    assert!(error(&["--strategy", "krum", "--multi-krum-m", "2"]).contains("--multi-krum-m"));
    assert!(error(&["--strategy", "fedavgm", "--beta2", "0.9"]).contains("--beta2"));
    assert!(error(&["--strategy", "trimmed-mean", "--trim-fraction", "0.5"]).contains("trim_fraction"));
    assert!(error(&["--strategy", "median", "--max-held-updates", "1"]).contains("max_held_updates (1) is below"));
    assert!(error(&["--server-lr=-1"]).contains("server_lr"));
    let unknown = Cli::try_parse_from(["coordinator", "--strategy", "fedsgd"]).unwrap_err().to_string();
    assert!(unknown.contains("unknown strategy"), "{unknown}");
}

#[test]
fn mode_flags_and_keys_select_asynchronous_buffered_aggregation() {
    assert_eq!(parse(&[]).into_config().unwrap().rounds.mode, Mode::Sync);
    let config = parse(&["--mode", "async", "--buffer-size", "4"]).into_config().unwrap();
    assert_eq!(config.rounds.mode, Mode::Async { buffer_size: 4, max_staleness: 20 });
    let defaults = parse(&["--mode", "async"]).into_config().unwrap();
    assert_eq!(defaults.rounds.mode, Mode::Async { buffer_size: 10, max_staleness: 20 });
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("coordinator.toml");
    std::fs::write(&file, "mode = \"async\"\nbuffer-size = 3\nmax-staleness = 5\n").unwrap();
    let options = Options { config: Some(file), ..parse(&["--max-staleness", "7"]) };
    assert_eq!(options.resolve().unwrap().rounds.mode, Mode::Async { buffer_size: 3, max_staleness: 7 });
    for args in [
        &["--buffer-size", "3"][..],
        &["--mode", "async", "--buffer-size", "0"],
        &["--mode", "async", "--strategy", "median"],
    ] {
        assert!(parse(args).into_config().is_err(), "{args:?}");
    }
    assert!(Cli::try_parse_from(["coordinator", "--mode", "later"]).is_err());
}

/// The HBP flags' help states the defaults of `HbpConfig::PAPER`, their one source.
#[test]
fn hbp_flags_help_states_the_papers_defaults() {
    use clap::Args;
    let command = Options::augment_args(clap::Command::new("flotilla-coordinator"));
    let paper = HbpConfig::PAPER;
    let expected = [
        ("hidden_layers", paper.hidden_layers.to_string()),
        ("width", paper.width.to_string()),
        ("lr", paper.learning_rate.to_string()),
        ("beta", paper.beta.to_string()),
        ("smoothing", paper.smoothing.to_string()),
        ("seed", paper.seed.to_string()),
    ];
    for (id, value) in expected {
        let arg = command.get_arguments().find(|a| a.get_id() == id).unwrap();
        let help = arg.get_help().unwrap().to_string();
        assert!(help.contains(&format!("[default: {value}]")), "--{id}: {help:?} should say [default: {value}]");
    }
    let resolved = parse(&["--inputs", "4", "--classes", "3"]).into_config().unwrap();
    assert_eq!(resolved.spec.as_ref().and_then(ModelSpec::hbp), Some(&HbpConfig::new(4, 3)));
}
