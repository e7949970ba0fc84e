//! Load-balancing policies for `grpc-lb`: `pick_first`, `round_robin` and
//! `weighted_round_robin`, written against `lb-core`.
