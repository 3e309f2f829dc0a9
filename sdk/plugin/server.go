package plugin

import (
	"context"
	"fmt"
	"time"

	"github.com/dwcp/dwcp/sdk"
	"github.com/dwcp/dwcp/sdk/accel"
	"github.com/dwcp/dwcp/sdk/codec"
	"github.com/dwcp/dwcp/sdk/hypervisor"
	pb "github.com/dwcp/dwcp/sdk/internal/pb/pluginv1"
	"google.golang.org/grpc"
	"google.golang.org/grpc/metadata"
)

// watchAcceptedKey marks the header of an accepted WatchMigration stream.
const watchAcceptedKey = "dwcp-watch-accepted"

// infoServer answers Describe and Fingerprint for any kind.
type infoServer struct {
	pb.UnimplementedPluginInfoServer
	desc      sdk.Description
	impl      any
	dataPlane func() string
}

func (s *infoServer) Describe(context.Context, *pb.DescribeRequest) (*pb.DescribeResponse, error) {
	versions := make([]uint32, len(s.desc.ProtocolVersions))
	for i, v := range s.desc.ProtocolVersions {
		versions[i] = uint32(v)
	}
	return &pb.DescribeResponse{
		Kind:             kindToPB(s.desc.Kind),
		Name:             s.desc.Name,
		Version:          s.desc.Version,
		ProtocolVersions: versions,
		SdkVersion:       s.desc.SDKVersion,
		Description:      s.desc.Summary,
	}, nil
}

func (s *infoServer) Fingerprint(ctx context.Context, _ *pb.FingerprintRequest) (*pb.FingerprintResponse, error) {
	h := sdk.Health{Status: sdk.Healthy}
	if hc, ok := s.impl.(sdk.HealthChecker); ok {
		h = hc.Health()
	}
	resp := &pb.FingerprintResponse{
		Health:       healthToPB(h.Status),
		HealthDetail: h.Detail,
		DataPlane:    s.dataPlane(),
	}
	switch impl := s.impl.(type) {
	case codec.Codec:
		resp.Capabilities = &pb.FingerprintResponse_Codec{Codec: codecCapsToPB(impl.Capabilities())}
	case accel.Accelerator:
		resp.Capabilities = &pb.FingerprintResponse_Accel{Accel: accelCapsToPB(impl.Capabilities())}
	case hypervisor.Hypervisor:
		caps, err := impl.Capabilities(ctx)
		if err != nil {
			resp.Health = pb.Health_HEALTH_UNHEALTHY
			resp.HealthDetail = err.Error()
		}
		// What the server can serve decides, not what the plugin claims.
		_, caps.FinishPaused = impl.(hypervisor.PausedFinisher)
		resp.Capabilities = &pb.FingerprintResponse_Hypervisor{Hypervisor: hvCapsToPB(caps)}
	}
	return resp, nil
}

// codecServer is the fallback data path for codecs.
type codecServer struct {
	pb.UnimplementedCodecServer
	impl codec.Codec
}

func (s *codecServer) Encode(stream grpc.BidiStreamingServer[pb.Chunk, pb.Chunk]) error {
	h, first, err := recvHeader(stream)
	if err != nil {
		return toStatus(err)
	}
	in, err := recvBody(stream, nil, first, int64(h.TotalLen), maxFallbackBlock)
	if err != nil {
		return toStatus(err)
	}
	out, err := s.impl.Encode(nil, in, int(h.Arg))
	if err != nil {
		return toStatus(err)
	}
	return sendChunks(stream, nil, out)
}

func (s *codecServer) Decode(stream grpc.BidiStreamingServer[pb.Chunk, pb.Chunk]) error {
	h, first, err := recvHeader(stream)
	if err != nil {
		return toStatus(err)
	}
	in, err := recvBody(stream, nil, first, int64(h.TotalLen), maxFallbackBlock)
	if err != nil {
		return toStatus(err)
	}
	out, err := s.impl.Decode(nil, in, int(min(h.MaxOut, maxFallbackBlock)))
	if err != nil {
		return toStatus(err)
	}
	return sendChunks(stream, nil, out)
}

// accelServer is the fallback data path for accelerators.
type accelServer struct {
	pb.UnimplementedAcceleratorServer
	impl accel.Accelerator
}

func (s *accelServer) Run(stream grpc.BidiStreamingServer[pb.Chunk, pb.Chunk]) error {
	h, first, err := recvHeader(stream)
	if err != nil {
		return toStatus(err)
	}
	in, err := recvBody(stream, nil, first, int64(h.TotalLen), maxFallbackBlock)
	if err != nil {
		return toStatus(err)
	}
	out, err := s.impl.Run(nil, accel.Op(h.Op), h.Arg, in)
	if err != nil {
		return toStatus(err)
	}
	if uint64(len(out)) > h.MaxOut {
		return toStatus(fmt.Errorf("accelerator %s output of %d bytes over the caller's limit %d: %w", accel.Op(h.Op), len(out), h.MaxOut, sdk.ErrTooLarge))
	}
	return sendChunks(stream, nil, out)
}

// hypervisorServer forwards the Hypervisor service to the implementation.
type hypervisorServer struct {
	pb.UnimplementedHypervisorServer
	impl hypervisor.Hypervisor
}

func (s *hypervisorServer) ListVMs(ctx context.Context, _ *pb.ListVMsRequest) (*pb.ListVMsResponse, error) {
	vms, err := s.impl.ListVMs(ctx)
	if err != nil {
		return nil, toStatus(err)
	}
	resp := &pb.ListVMsResponse{}
	for _, v := range vms {
		resp.Vms = append(resp.Vms, vmInfoToPB(v))
	}
	return resp, nil
}

func (s *hypervisorServer) InspectVM(ctx context.Context, req *pb.InspectVMRequest) (*pb.VMInfo, error) {
	v, err := s.impl.InspectVM(ctx, vmRefFromPB(req.GetVm()))
	if err != nil {
		return nil, toStatus(err)
	}
	return vmInfoToPB(v), nil
}

func (s *hypervisorServer) PrepareSource(ctx context.Context, req *pb.PrepareSourceRequest) (*pb.PrepareSourceResponse, error) {
	id, info, err := s.impl.PrepareSource(ctx, vmRefFromPB(req.GetVm()), paramsFromPB(req.GetParams()))
	if err != nil {
		return nil, toStatus(err)
	}
	return &pb.PrepareSourceResponse{MigrationId: id, Vm: vmInfoToPB(info)}, nil
}

func (s *hypervisorServer) PrepareDestination(ctx context.Context, req *pb.PrepareDestinationRequest) (*pb.PrepareDestinationResponse, error) {
	id, ref, err := s.impl.PrepareDestination(ctx, hypervisor.DestinationRequest{
		VM:               vmRefFromPB(req.GetVm()),
		Config:           vmConfigFromPB(req.GetConfig()),
		IncomingEndpoint: req.GetIncomingEndpoint(),
		Params:           paramsFromPB(req.GetParams()),
	})
	if err != nil {
		return nil, toStatus(err)
	}
	return &pb.PrepareDestinationResponse{MigrationId: id, Vm: vmRefToPB(ref)}, nil
}

func (s *hypervisorServer) StartMigration(ctx context.Context, req *pb.StartMigrationRequest) (*pb.StartMigrationResponse, error) {
	if err := s.impl.StartMigration(ctx, req.GetMigrationId(), req.GetOutgoingEndpoint()); err != nil {
		return nil, toStatus(err)
	}
	return &pb.StartMigrationResponse{}, nil
}

func (s *hypervisorServer) WatchMigration(req *pb.WatchMigrationRequest, stream grpc.ServerStreamingServer[pb.MigrationEvent]) error {
	ctx, cancel := context.WithCancel(stream.Context())
	defer cancel()
	events, err := s.impl.WatchMigration(ctx, req.GetMigrationId())
	if err != nil {
		return toStatus(err)
	}
	// The header tells the client the watch was accepted, so that an
	// unknown migration fails the call instead of an empty stream.
	if err := stream.SendHeader(metadata.Pairs(watchAcceptedKey, "1")); err != nil {
		return err
	}
	for {
		select {
		case <-ctx.Done():
			return toStatus(ctx.Err())
		case e, ok := <-events:
			if !ok {
				return nil
			}
			if e.Time.IsZero() {
				e.Time = time.Now()
			}
			if err := stream.Send(eventToPB(e)); err != nil {
				return err
			}
		}
	}
}

func (s *hypervisorServer) QueryMigration(ctx context.Context, req *pb.QueryMigrationRequest) (*pb.MigrationStatus, error) {
	st, err := s.impl.QueryMigration(ctx, req.GetMigrationId())
	if err != nil {
		return nil, toStatus(err)
	}
	return statusToPB(st), nil
}

func (s *hypervisorServer) SetLimits(ctx context.Context, req *pb.SetLimitsRequest) (*pb.SetLimitsResponse, error) {
	if err := s.impl.SetLimits(ctx, req.GetMigrationId(), paramsFromPB(req.GetParams())); err != nil {
		return nil, toStatus(err)
	}
	return &pb.SetLimitsResponse{}, nil
}

func (s *hypervisorServer) CancelMigration(ctx context.Context, req *pb.CancelMigrationRequest) (*pb.CancelMigrationResponse, error) {
	if err := s.impl.CancelMigration(ctx, req.GetMigrationId()); err != nil {
		return nil, toStatus(err)
	}
	return &pb.CancelMigrationResponse{}, nil
}

func (s *hypervisorServer) FinishMigration(ctx context.Context, req *pb.FinishMigrationRequest) (*pb.FinishMigrationResponse, error) {
	if req.GetKeepPaused() {
		return s.finishPaused(ctx, req)
	}
	st, err := s.impl.FinishMigration(ctx, req.GetMigrationId(), req.GetResume())
	if err != nil {
		return nil, toStatus(err)
	}
	return &pb.FinishMigrationResponse{Status: statusToPB(st)}, nil
}

// finishPaused serves FinishMigration with keep_paused. Resume and
// keep_paused together contradict each other: refused rather than guessed.
func (s *hypervisorServer) finishPaused(ctx context.Context, req *pb.FinishMigrationRequest) (*pb.FinishMigrationResponse, error) {
	if req.GetResume() {
		return nil, toStatus(fmt.Errorf("finish migration %s: resume and keep_paused both set: %w", req.GetMigrationId(), sdk.ErrInvalidArgument))
	}
	pf, ok := s.impl.(hypervisor.PausedFinisher)
	if !ok {
		return nil, toStatus(fmt.Errorf("finish migration %s paused: this plugin cannot leave a VM paused: %w", req.GetMigrationId(), sdk.ErrUnsupported))
	}
	st, err := pf.FinishMigrationPaused(ctx, req.GetMigrationId())
	if err != nil {
		return nil, toStatus(err)
	}
	return &pb.FinishMigrationResponse{Status: statusToPB(st), Paused: true}, nil
}
