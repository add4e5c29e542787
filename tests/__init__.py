from common.grpc_fork import disable_grpc_fork_handlers

disable_grpc_fork_handlers()  # before any module here imports gRPC and starts a server's children
