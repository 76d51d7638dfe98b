//! Live updates: a Server-Sent Events stream that says "something changed" whenever an app,
//! version, Approval or PromotionPolicy of the namespace changes, from metadata-only watches made
//! with the viewer's credentials (so a viewer who may not watch a kind simply hears nothing of
//! it). The page then fetches itself again; no object content travels on this stream.

use std::{convert::Infallible, fmt::Debug, time::Duration};

use axum::{
    Extension,
    extract::{Query, State},
    response::{
        IntoResponse, Response,
        sse::{Event, KeepAlive, Sse},
    },
};
use futures::{StreamExt, stream::BoxStream};
use kube::{
    Api, Client, Resource,
    core::PartialObjectMeta,
    runtime::{WatchStreamExt, watcher},
};
use serde::{Deserialize, de::DeserializeOwned};
use tooljet_operator::api::{AppVersion, Approval, PromotionPolicy, ToolJetApp};

use super::routes::{Server, Viewer};

#[derive(Deserialize)]
pub struct Live {
    ns: String,
}

/// The kinds whose changes a page shows.
fn changes<K>(client: Client, ns: &str, kind: &'static str) -> BoxStream<'static, &'static str>
where
    K: Resource<DynamicType = (), Scope = kube::core::NamespaceResourceScope>
        + Clone
        + DeserializeOwned
        + Debug
        + Send
        + Sync
        + 'static,
{
    let api: Api<PartialObjectMeta<K>> = Api::namespaced(client, ns);
    watcher(api, watcher::Config::default())
        .default_backoff()
        .filter_map(move |e| async move {
            match e {
                Ok(watcher::Event::Apply(_) | watcher::Event::Delete(_)) => Some(kind),
                _ => None,
            }
        })
        .boxed()
}

pub async fn events(
    State(s): State<std::sync::Arc<Server>>,
    Extension(v): Extension<Viewer>,
    Query(q): Query<Live>,
) -> Response {
    let c = match s.cluster(&v, &q.ns).await {
        Ok(acting) => acting.client.clone(),
        // No stream: the page stays as it is (and says so).
        Err(e) => {
            let status = match e {
                crate::error::Error::Usage(_) => axum::http::StatusCode::BAD_REQUEST,
                _ => axum::http::StatusCode::BAD_GATEWAY,
            };
            return (status, e.to_string()).into_response();
        }
    };
    let ns = q.ns.as_str();
    let streams = vec![
        changes::<ToolJetApp>(c.clone(), ns, "ToolJetApp"),
        changes::<AppVersion>(c.clone(), ns, "AppVersion"),
        changes::<Approval>(c.clone(), ns, "Approval"),
        changes::<PromotionPolicy>(c, ns, "PromotionPolicy"),
    ];
    let stream = futures::stream::select_all(streams)
        .map(|kind| Ok::<_, Infallible>(Event::default().event("change").data(kind)));
    Sse::new(stream)
        .keep_alive(KeepAlive::new().interval(Duration::from_secs(15)))
        .into_response()
}
