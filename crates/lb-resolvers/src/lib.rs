//! Name resolvers and server-side registrars for `grpc-lb`: DNS, etcd and ZooKeeper,
//! each behind a cargo feature (`dns`, `etcd`, `zookeeper`). Written against
//! `lb-core`'s `Resolver` and `ResolverBuilder` traits.
