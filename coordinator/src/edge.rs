//! An edge aggregator (`--parent`): a coordinator to its own clients and a client of its
//! parent. Its upstream session ([`flotilla_net::session::run_client_session`], the one the
//! client daemon runs) relays the parent's models and requests to the aggregator's round
//! task as [`ParentInput`]s; each request runs a round over the aggregator's clients and is
//! answered with their aggregate, sent as a `CohortUpdate`.
//!
//! What an edge learns: with plain rounds, each of its clients' updates (as a flat
//! coordinator does); with `--secure-aggregation`, only its cohort's sum (SecAgg+ runs
//! between the edge and its clients). The root learns each cohort's aggregate, never a
//! single client's update when the cohort runs secure aggregation.
//!
//! Under the root's client-level differential privacy (its rules carry a
//! [`CohortPrivacy`]), the edge samples its clients at the root's rate on its own secret
//! coins, clips every update to the root's bound and sends the unnoised mean with the
//! cohort's expected size; the root adds the noise once and accounts the release. Edge and
//! root are trusted curators, as a flat coordinator is under central noise: the edge sees
//! its clients' clipped updates, the root each cohort's unnoised sum; what leaves the root
//! (every model) is (ε, δ)-private.

use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use flotilla_net::endpoint::ParentInput;
use flotilla_net::session::{ClientSessionConfig, LearnerRequest, run_client_session};
use flotilla_protocol::checkpoint::Checkpoint;
use flotilla_protocol::model::ModelSpec;
use flotilla_protocol::params::Fingerprint;
use flotilla_protocol::round::Hierarchy;
use flotilla_protocol::wire::CohortPrivacy;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::server::{RunSummary, bind_edge};

/// Runs the aggregator until `shutdown` is cancelled or its parent refuses it for good;
/// `Ok(None)` when shutdown came before the parent's first model.
pub(crate) async fn run(config: Config, shutdown: CancellationToken) -> anyhow::Result<Option<RunSummary>> {
    let parent = config.parent.clone().context("an edge aggregator needs --parent")?;
    let (learner_tx, mut learner_rx) = mpsc::channel(16);
    let name = format!("aggregator@{}", config.listen);
    let mut session = ClientSessionConfig::new(parent.addr, parent.server_name.clone(), parent.ca.clone(), name);
    session.auth_token = Some(parent.token.clone());
    session.max_frame = config.max_frame;
    session.announce = parent.advertise.clone();
    // The parent notices this aggregator gone within seconds and stops redirecting to it.
    session.tuning = session.tuning.with_idle_timeout(flotilla_net::transport::UPSTREAM_IDLE_TIMEOUT);
    let session_stop = CancellationToken::new();
    let upstream = tokio::spawn(run_client_session(session, learner_tx, session_stop.clone()));
    tracing::info!(parent = %parent.addr, "waiting for the parent's model");
    let first = tokio::select! {
        () = shutdown.cancelled() => None,
        first = first_model(&mut learner_rx) => first,
    };
    let Some((checkpoint, privacy)) = first else {
        session_stop.cancel();
        upstream.await.context("the parent's session panicked")??;
        return if shutdown.is_cancelled() {
            Ok(None)
        } else {
            bail!("the parent's session ended before its first model")
        };
    };
    let (parent_tx, parent_rx) = mpsc::channel(16);
    let fallback = config.rounds.round_deadline;
    // What the parent trains; a rejoin that announces anything else ends the relay.
    let (spec, fingerprint) = (checkpoint.spec.clone(), checkpoint.params.fingerprint);
    if let Some(p) = &privacy {
        tracing::info!(
            clip = p.clip,
            sample_rate = p.sample_rate,
            "the root runs differential privacy: this aggregator samples and clips its cohort for it"
        );
    }
    let mut config = config;
    config.rounds.hierarchy = Hierarchy::Edge { privacy };
    let server = match bind_edge(config, checkpoint, parent_rx).await {
        Ok(server) => server,
        Err(error) => {
            session_stop.cancel();
            let _ = upstream.await;
            return Err(error);
        }
    };
    let relay = tokio::spawn(relay(learner_rx, parent_tx, Served { spec, fingerprint, privacy }, fallback));
    // Serving ends on shutdown, or when the relay stops (the parent's session ended or its
    // model changed): the round task sees its parent channel close.
    let served = server.run(shutdown).await;
    session_stop.cancel();
    let upstream = upstream.await.context("the parent's session panicked")?;
    relay.await.context("the relay task panicked")??;
    upstream?;
    served.map(Some)
}

/// Waits for the parent's `Welcome` and first model: the starting state (the session has
/// checked the model against the announced layout) and the parent's differential privacy.
async fn first_model(learner: &mut mpsc::Receiver<LearnerRequest>) -> Option<(Checkpoint, Option<CohortPrivacy>)> {
    let mut welcomed = None;
    while let Some(request) = learner.recv().await {
        match request {
            LearnerRequest::Welcome { spec, .. } => welcomed = Some(spec),
            LearnerRequest::Adopt { model_version, round, params, cohort_privacy, .. } => {
                let Some(spec) = welcomed.clone() else { continue };
                return Some((
                    Checkpoint { round, model_version, ..Checkpoint::initial(spec, params) },
                    cohort_privacy,
                ));
            }
            // Asked before the aggregator serves anyone: the request lapses.
            LearnerRequest::Update { round, .. } => tracing::debug!(round, "parent's request before the first model"),
        }
    }
    None
}

/// What this aggregator was set up for from its parent's first model and rules.
struct Served {
    spec: ModelSpec,
    fingerprint: Fingerprint,
    privacy: Option<CohortPrivacy>,
}

/// Relays the parent's session to the round task until either side ends; an error when the
/// parent starts training another model (this aggregator's clients hold the old one) or
/// changes its differential privacy.
async fn relay(
    mut from: mpsc::Receiver<LearnerRequest>,
    to: mpsc::Sender<ParentInput>,
    served: Served,
    fallback: Duration,
) -> anyhow::Result<()> {
    while let Some(request) = from.recv().await {
        let input = match request {
            LearnerRequest::Welcome { spec, fingerprint } => {
                if spec != served.spec || fingerprint != served.fingerprint {
                    bail!("the parent now trains another model (its layout changed): restart this aggregator");
                }
                tracing::info!("rejoined the parent");
                continue;
            }
            LearnerRequest::Adopt { model_version, round, params, cohort_privacy, .. } => {
                if cohort_privacy != served.privacy {
                    bail!(
                        "the parent's differential privacy changed ({:?}, was {:?}): restart this aggregator",
                        cohort_privacy,
                        served.privacy
                    );
                }
                ParentInput::Model { model_version, round, params }
            }
            LearnerRequest::Update { round, model_version, reply, deadline, .. } => {
                let deadline = deadline.map_or(fallback, |at| at.saturating_duration_since(Instant::now()));
                ParentInput::Request { round, model_version, deadline, reply }
            }
        };
        if to.send(input).await.is_err() {
            break;
        }
    }
    Ok(())
}
