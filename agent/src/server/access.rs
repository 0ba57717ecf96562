//! Who may talk to the agent: an optional CIDR allowlist (403) and an
//! optional bearer token (401), checked before any handler runs.

use std::convert::Infallible;
use std::net::{IpAddr, SocketAddr};

use axum::extract::connect_info::MockConnectInfo;
use axum::extract::{ConnectInfo, FromRequestParts, Request, State};
use axum::http::{header, request::Parts, Extensions};
use axum::middleware::Next;
use axum::response::Response;
use ipnet::IpNet;

use super::error::{ApiError, ErrorStyle};
use super::AppState;
use crate::config::BearerToken;

/// Paths answered without a token, so that orchestrator probes need no
/// secret; the handler then reveals nothing beyond liveness. The allowlist
/// still applies.
/// The dashboard's page is static (its data comes from token-checked
/// requests it makes with the token the user types in).
const TOKEN_EXEMPT: &[&str] = &["/health", "/debug", "/debug/"];

/// Marks a request that came without a valid token (on a token-exempt path).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Anonymous;

pub(crate) async fn check(State(state): State<AppState>, request: Request, next: Next) -> Response {
    let peer = peer_of(request.extensions());
    let path = request.uri().path().to_owned();
    let style = ErrorStyle::for_path(&path);
    if !allowed(&state.config.allow, peer) {
        tracing::warn!(?peer, %path, "refused: client address not in the allowlist");
        return ApiError::Forbidden.render(style);
    }
    let mut request = request;
    if let Some(token) = &state.config.token {
        if !bearer_matches(&request, token) {
            if !TOKEN_EXEMPT.contains(&path.as_str()) {
                tracing::warn!(?peer, %path, "refused: missing or wrong bearer token");
                return ApiError::Unauthorized.render(style);
            }
            request.extensions_mut().insert(Anonymous);
        }
    }
    next.run(request).await
}

/// The TCP peer of a request, as recorded by the server's accept loop (or
/// by `MockConnectInfo` in router tests).
fn peer_of(extensions: &Extensions) -> Option<SocketAddr> {
    extensions
        .get::<ConnectInfo<SocketAddr>>()
        .map(|ConnectInfo(addr)| *addr)
        .or_else(|| {
            extensions
                .get::<MockConnectInfo<SocketAddr>>()
                .map(|MockConnectInfo(addr)| *addr)
        })
}

/// Extractor of the client address, for logs.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Peer(pub(crate) Option<SocketAddr>);

impl<S: Send + Sync> FromRequestParts<S> for Peer {
    type Rejection = Infallible;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        Ok(Peer(peer_of(&parts.extensions)))
    }
}

/// An empty allowlist allows everyone; otherwise the peer must be inside
/// one of the blocks. IPv4 clients of a dual-stack listener are matched by
/// their IPv4 address.
pub(crate) fn allowed(allow: &[IpNet], peer: Option<SocketAddr>) -> bool {
    if allow.is_empty() {
        return true;
    }
    let Some(peer) = peer else {
        return false;
    };
    let ip = match peer.ip() {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(IpAddr::V6(v6), IpAddr::V4),
        v4 => v4,
    };
    allow.iter().any(|net| net.contains(&ip))
}

fn bearer_matches(request: &Request, token: &BearerToken) -> bool {
    let Some(value) = request.headers().get(header::AUTHORIZATION) else {
        return false;
    };
    let Ok(value) = value.to_str() else {
        return false;
    };
    let Some((scheme, presented)) = value.split_once(' ') else {
        return false;
    };
    scheme.eq_ignore_ascii_case("bearer") && token.matches(presented.trim().as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn allowlist_matches_blocks_and_mapped_addresses() {
        let allow = vec!["10.0.0.0/8".parse().unwrap()];
        let inside: SocketAddr = "10.1.2.3:5000".parse().unwrap();
        let outside: SocketAddr = "127.0.0.1:5000".parse().unwrap();
        let mapped: SocketAddr = "[::ffff:10.9.9.9]:5000".parse().unwrap();
        assert!(allowed(&allow, Some(inside)));
        assert!(!allowed(&allow, Some(outside)));
        assert!(allowed(&allow, Some(mapped)));
        assert!(!allowed(&allow, None));
        assert!(allowed(&[], Some(outside)));
    }
}
