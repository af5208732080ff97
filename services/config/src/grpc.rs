//! `aigw.config.v1.ConfigService` over the shared resource service. Reads answered
//! while the view may be stale (etcd unreachable or without quorum) carry the metadata
//! `x-aigw-stale: true`. Every method is the REST call of the same name with the proto3
//! JSON of the REST body (CONTRACT §3, §12, §14).

use std::sync::Arc;

use aigw_model::prices::{Price, default_catalog};
use aigw_model::proto_json::*;
use aigw_proto::config::v1::config_service_server::ConfigService;
use aigw_proto::config::v1::*;
use serde_json::Value;
use tonic::{Request, Response, Status};

use crate::error::ApiError;
use crate::kinds::consumer::CredentialKind;
use crate::kinds::{CONSUMERS, CREDENTIALS, GROUPS, PRICES, ROUTES};
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

fn internal(e: impl std::fmt::Display) -> Status {
    ApiError::internal(e).into()
}

fn to_proto(v: &Value) -> Result<Route, Status> {
    route_to_proto(v).map_err(internal)
}

fn consumer(v: &Value) -> Result<Consumer, Status> {
    consumer_to_proto(v).map_err(internal)
}

fn credential(username: &str, v: &Value) -> Result<Credential, Status> {
    credential_to_proto(username, v).map_err(internal)
}

fn group(v: &Value) -> Result<ConsumerGroup, Status> {
    group_to_proto(v).map_err(internal)
}

fn price(v: &Value) -> Result<aigw_proto::config::v1::Price, Status> {
    Price::from_json(v).map(|p| price_to_proto(&p)).map_err(internal)
}

fn required(what: &str, v: &str) -> Result<(), Status> {
    if v.is_empty() { Err(Status::invalid_argument(format!("{what}: is required"))) } else { Ok(()) }
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

    async fn put_consumer(&self, req: Request<PutConsumerRequest>) -> Result<Response<PutConsumerResponse>, Status> {
        let c = req.into_inner().consumer.ok_or_else(|| Status::invalid_argument("consumer: is required"))?;
        required("consumer.username", &c.username)?;
        let out = self.svc.put(&CONSUMERS, consumer_from_proto(&c), None).await?;
        Ok(Response::new(PutConsumerResponse { consumer: Some(consumer(&out.value)?) }))
    }

    async fn get_consumer(&self, req: Request<GetConsumerRequest>) -> Result<Response<GetConsumerResponse>, Status> {
        let username = req.into_inner().username;
        required("username", &username)?;
        let v = self.svc.get(&CONSUMERS, &username)?;
        Ok(self.read_response(GetConsumerResponse { consumer: Some(consumer(&v)?) }))
    }

    async fn list_consumers(&self, _req: Request<ListConsumersRequest>) -> Result<Response<ListConsumersResponse>, Status> {
        let (list, version) = self.svc.list(&CONSUMERS);
        let consumers = list.iter().map(consumer).collect::<Result<Vec<_>, _>>()?;
        Ok(self.read_response(ListConsumersResponse { consumers, version }))
    }

    async fn delete_consumer(&self, req: Request<DeleteConsumerRequest>) -> Result<Response<DeleteConsumerResponse>, Status> {
        let username = req.into_inner().username;
        required("username", &username)?;
        self.svc.delete(&CONSUMERS, &username).await?;
        Ok(Response::new(DeleteConsumerResponse {}))
    }

    async fn put_credential(&self, req: Request<PutCredentialRequest>) -> Result<Response<PutCredentialResponse>, Status> {
        let c = req.into_inner().credential.ok_or_else(|| Status::invalid_argument("credential: is required"))?;
        required("credential.username", &c.username)?;
        required("credential.id", &c.id)?;
        let (username, body) = credential_from_proto(&c);
        let out = self.svc.put(&CREDENTIALS, body, Some(&CredentialKind::name(&username, &c.id))).await?;
        Ok(Response::new(PutCredentialResponse { credential: Some(credential(&username, &out.value)?) }))
    }

    async fn get_credential(&self, req: Request<GetCredentialRequest>) -> Result<Response<GetCredentialResponse>, Status> {
        let r = req.into_inner();
        required("username", &r.username)?;
        required("id", &r.id)?;
        let v = self.svc.get(&CREDENTIALS, &CredentialKind::name(&r.username, &r.id))?;
        Ok(self.read_response(GetCredentialResponse { credential: Some(credential(&r.username, &v)?) }))
    }

    async fn list_credentials(&self, req: Request<ListCredentialsRequest>) -> Result<Response<ListCredentialsResponse>, Status> {
        let username = req.into_inner().username;
        required("username", &username)?;
        self.svc.get(&CONSUMERS, &username)?;
        let list = self.svc.list_prefix(&CREDENTIALS, &format!("consumers/{username}/credentials/"));
        let credentials = list.iter().map(|(_, v)| credential(&username, v)).collect::<Result<Vec<_>, _>>()?;
        Ok(self.read_response(ListCredentialsResponse { credentials }))
    }

    async fn delete_credential(&self, req: Request<DeleteCredentialRequest>) -> Result<Response<DeleteCredentialResponse>, Status> {
        let r = req.into_inner();
        required("username", &r.username)?;
        required("id", &r.id)?;
        self.svc.delete(&CREDENTIALS, &CredentialKind::name(&r.username, &r.id)).await?;
        Ok(Response::new(DeleteCredentialResponse {}))
    }

    async fn put_consumer_group(&self, req: Request<PutConsumerGroupRequest>) -> Result<Response<PutConsumerGroupResponse>, Status> {
        let g = req.into_inner().group.ok_or_else(|| Status::invalid_argument("group: is required"))?;
        required("group.id", &g.id)?;
        let out = self.svc.put(&GROUPS, group_from_proto(&g), None).await?;
        Ok(Response::new(PutConsumerGroupResponse { group: Some(group(&out.value)?) }))
    }

    async fn get_consumer_group(&self, req: Request<GetConsumerGroupRequest>) -> Result<Response<GetConsumerGroupResponse>, Status> {
        let id = req.into_inner().id;
        required("id", &id)?;
        let v = self.svc.get(&GROUPS, &id)?;
        Ok(self.read_response(GetConsumerGroupResponse { group: Some(group(&v)?) }))
    }

    async fn list_consumer_groups(&self, _req: Request<ListConsumerGroupsRequest>) -> Result<Response<ListConsumerGroupsResponse>, Status> {
        let (list, _) = self.svc.list(&GROUPS);
        let groups = list.iter().map(group).collect::<Result<Vec<_>, _>>()?;
        Ok(self.read_response(ListConsumerGroupsResponse { groups }))
    }

    async fn delete_consumer_group(
        &self,
        req: Request<DeleteConsumerGroupRequest>,
    ) -> Result<Response<DeleteConsumerGroupResponse>, Status> {
        let id = req.into_inner().id;
        required("id", &id)?;
        self.svc.delete(&GROUPS, &id).await?;
        Ok(Response::new(DeleteConsumerGroupResponse {}))
    }

    async fn put_price(&self, req: Request<PutPriceRequest>) -> Result<Response<PutPriceResponse>, Status> {
        let p = req.into_inner().price.ok_or_else(|| Status::invalid_argument("price: is required"))?;
        let out = self.svc.put(&PRICES, price_from_proto(&p), None).await?;
        Ok(Response::new(PutPriceResponse { price: Some(price(&out.value)?) }))
    }

    async fn list_prices(&self, _req: Request<ListPricesRequest>) -> Result<Response<ListPricesResponse>, Status> {
        let (list, _) = self.svc.list(&PRICES);
        let prices = list.iter().map(price).collect::<Result<Vec<_>, _>>()?;
        let (defaults_date, defaults) = default_catalog();
        let defaults = defaults.iter().map(price_to_proto).collect();
        Ok(self.read_response(ListPricesResponse { prices, defaults, defaults_date }))
    }

    async fn delete_price(&self, req: Request<DeletePriceRequest>) -> Result<Response<DeletePriceResponse>, Status> {
        let r = req.into_inner();
        required("provider", &r.provider)?;
        required("model", &r.model)?;
        self.svc.delete(&PRICES, &format!("{}/{}", r.provider, r.model)).await?;
        Ok(Response::new(DeletePriceResponse {}))
    }
}
