//! Generated code only. Conversions to domain types live in `aigw-model`.
#![allow(clippy::all, missing_docs)]

pub mod config {
    pub mod v1 {
        tonic::include_proto!("aigw.config.v1");
    }
}
pub mod discovery {
    pub mod v1 {
        tonic::include_proto!("aigw.discovery.v1");
    }
}
pub mod tokencache {
    pub mod v1 {
        tonic::include_proto!("aigw.tokencache.v1");
    }
}

/// The subset of etcd's v3 API that aigw-config's etcd client uses (`proto/etcd/`):
/// etcd's own packages, messages and field numbers. Client side only.
pub mod etcd {
    pub mod mvccpb {
        tonic::include_proto!("mvccpb");
    }
    pub mod etcdserverpb {
        tonic::include_proto!("etcdserverpb");
    }
}

/// Encoded `FileDescriptorSet` of every aigw proto, for gRPC server reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/aigw_descriptor.bin"));
