//! `aigw.config.v1.ConfigService` over the shared resource service. Reads answered
//! while the view may be stale (etcd unreachable or without quorum) carry the metadata
//! `x-aigw-stale: true`.

use std::sync::Arc;

use aigw_model::proto_json::{route_from_proto, route_to_proto};
use aigw_proto::config::v1::config_service_server::ConfigService;
use aigw_proto::config::v1::*;
use tonic::{Request, Response, Status};

use crate::error::ApiError;
use crate::kinds::ROUTES;
use crate::service::ResourceService;

pub struct ConfigGrpc {
    pub svc: Arc<ResourceService>,
}

/// Metadata marking a read served from a view that may be stale.
pub const STALE_METADATA: &str = "x-aigw-stale";

impl ConfigGrpc {
    fn read_response<T>(&self, msg: T) -> Response<T> {
        let mut r = Response::new(msg);
        if self.svc.stale().is_some() {
            r.metadata_mut().insert(STALE_METADATA, tonic::metadata::AsciiMetadataValue::from_static("true"));
        }
        r
    }
}

fn to_proto(v: &serde_json::Value) -> Result<Route, Status> {
    route_to_proto(v).map_err(|e| ApiError::internal(e).into())
}

#[tonic::async_trait]
impl ConfigService for ConfigGrpc {
    async fn put_route(&self, req: Request<PutRouteRequest>) -> Result<Response<PutRouteResponse>, Status> {
        let route = req.into_inner().route.ok_or_else(|| Status::invalid_argument("route: is required"))?;
        let out = self.svc.put(&ROUTES, route_from_proto(&route), None).await?;
        Ok(Response::new(PutRouteResponse { route: Some(to_proto(&out.value)?) }))
    }

    async fn get_route(&self, req: Request<GetRouteRequest>) -> Result<Response<GetRouteResponse>, Status> {
        let r = self.svc.get(&ROUTES, &req.into_inner().id)?;
        Ok(self.read_response(GetRouteResponse { route: Some(to_proto(&r)?) }))
    }

    async fn list_routes(&self, _req: Request<ListRoutesRequest>) -> Result<Response<ListRoutesResponse>, Status> {
        let (routes, version) = self.svc.list(&ROUTES);
        let routes = routes.iter().map(to_proto).collect::<Result<Vec<_>, _>>()?;
        Ok(self.read_response(ListRoutesResponse { routes, version }))
    }

    async fn delete_route(&self, req: Request<DeleteRouteRequest>) -> Result<Response<DeleteRouteResponse>, Status> {
        self.svc.delete(&ROUTES, &req.into_inner().id).await?;
        Ok(Response::new(DeleteRouteResponse {}))
    }
}
