//! `aigw.config.v1.ConfigService` over the shared route service.

use std::sync::Arc;

use aigw_model::proto_json::{route_from_proto, route_to_proto};
use aigw_proto::config::v1::config_service_server::ConfigService;
use aigw_proto::config::v1::*;
use tonic::{Request, Response, Status};

use crate::error::ApiError;
use crate::routes::RouteService;

pub struct ConfigGrpc {
    pub routes: Arc<RouteService>,
}

fn to_proto(v: &serde_json::Value) -> Result<Route, Status> {
    route_to_proto(v).map_err(|e| ApiError::internal(e).into())
}

#[tonic::async_trait]
impl ConfigService for ConfigGrpc {
    async fn put_route(&self, req: Request<PutRouteRequest>) -> Result<Response<PutRouteResponse>, Status> {
        let route = req.into_inner().route.ok_or_else(|| Status::invalid_argument("route: is required"))?;
        let out = self.routes.put(route_from_proto(&route), None).await?;
        Ok(Response::new(PutRouteResponse { route: Some(to_proto(&out.route)?) }))
    }

    async fn get_route(&self, req: Request<GetRouteRequest>) -> Result<Response<GetRouteResponse>, Status> {
        let r = self.routes.get(&req.into_inner().id).await?;
        Ok(Response::new(GetRouteResponse { route: Some(to_proto(&r)?) }))
    }

    async fn list_routes(&self, _req: Request<ListRoutesRequest>) -> Result<Response<ListRoutesResponse>, Status> {
        let (routes, version) = self.routes.list().await;
        let routes = routes.iter().map(to_proto).collect::<Result<Vec<_>, _>>()?;
        Ok(Response::new(ListRoutesResponse { routes, version }))
    }

    async fn delete_route(&self, req: Request<DeleteRouteRequest>) -> Result<Response<DeleteRouteResponse>, Status> {
        self.routes.delete(&req.into_inner().id).await?;
        Ok(Response::new(DeleteRouteResponse {}))
    }
}
