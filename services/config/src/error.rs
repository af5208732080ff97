//! The one place admin errors become gRPC statuses and REST responses.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorCode {
    InvalidArgument,
    PayloadTooLarge,
    NotFound,
    Unauthenticated,
    /// The store cannot take writes now (etcd without quorum or unreachable).
    Unavailable,
    /// Concurrent writes to the same resources kept conflicting (another replica).
    Conflict,
    Internal,
}

#[derive(Debug, Clone, thiserror::Error)]
#[error("{message}")]
pub struct ApiError {
    pub code: ErrorCode,
    pub message: String,
}

impl ApiError {
    pub fn invalid(m: impl Into<String>) -> Self {
        Self { code: ErrorCode::InvalidArgument, message: m.into() }
    }
    pub fn too_large(m: impl Into<String>) -> Self {
        Self { code: ErrorCode::PayloadTooLarge, message: m.into() }
    }
    /// `{noun} "{name}" not found` (`route "r1" not found`).
    pub fn not_found(noun: &str, name: &str) -> Self {
        let shown: String = name.chars().take(80).collect();
        Self { code: ErrorCode::NotFound, message: format!("{noun} {shown:?} not found") }
    }
    /// The message names the store (`etcd unavailable: …`).
    pub fn unavailable(m: impl Into<String>) -> Self {
        Self { code: ErrorCode::Unavailable, message: m.into() }
    }
    pub fn conflict(m: impl Into<String>) -> Self {
        Self { code: ErrorCode::Conflict, message: m.into() }
    }
    pub fn unauthenticated() -> Self {
        Self { code: ErrorCode::Unauthenticated, message: "missing or wrong admin key (x-api-key)".into() }
    }
    pub fn internal(e: impl std::fmt::Display) -> Self {
        tracing::error!(error = %e, "internal error");
        Self { code: ErrorCode::Internal, message: format!("internal error: {e}") }
    }
}

impl From<ApiError> for tonic::Status {
    fn from(e: ApiError) -> Self {
        match e.code {
            ErrorCode::InvalidArgument => tonic::Status::invalid_argument(e.message),
            ErrorCode::PayloadTooLarge => tonic::Status::resource_exhausted(e.message),
            ErrorCode::NotFound => tonic::Status::not_found(e.message),
            ErrorCode::Unauthenticated => tonic::Status::unauthenticated(e.message),
            ErrorCode::Unavailable => tonic::Status::unavailable(e.message),
            ErrorCode::Conflict => tonic::Status::aborted(e.message),
            ErrorCode::Internal => tonic::Status::internal(e.message),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = match self.code {
            ErrorCode::InvalidArgument => StatusCode::BAD_REQUEST,
            ErrorCode::PayloadTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            ErrorCode::NotFound => StatusCode::NOT_FOUND,
            ErrorCode::Unauthenticated => StatusCode::UNAUTHORIZED,
            ErrorCode::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
            ErrorCode::Conflict => StatusCode::CONFLICT,
            ErrorCode::Internal => StatusCode::INTERNAL_SERVER_ERROR,
        };
        (status, axum::Json(serde_json::json!({ "error_msg": self.message }))).into_response()
    }
}
