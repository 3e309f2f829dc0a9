package plugin

import (
	"context"

	goplugin "github.com/hashicorp/go-plugin"
	"google.golang.org/grpc"
)

// grpcPlugin is the single go-plugin Plugin of every DWCP plugin set. On the
// plugin side it registers the services; on the host side it hands back the
// raw connection, which Instance wraps per kind.
type grpcPlugin struct {
	goplugin.NetRPCUnsupportedPlugin
	server func(*grpc.Server)
}

func (p *grpcPlugin) GRPCServer(_ *goplugin.GRPCBroker, s *grpc.Server) error {
	p.server(s)
	return nil
}

func (p *grpcPlugin) GRPCClient(_ context.Context, _ *goplugin.GRPCBroker, c *grpc.ClientConn) (any, error) {
	return c, nil
}
