package client_test

// Tests of the generated Go code (scripts/generate.sh): a Flow with every field set round-trips
// through the binary and JSON formats, the enums and the service match DESIGN.md, and the gRPC
// client and server types are usable. Messages are filled generically through protoreflect, so
// fields added to the protos later are covered without touching this file.

import (
	"slices"
	"sort"
	"strings"
	"testing"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"
	"google.golang.org/protobuf/types/known/anypb"
	"google.golang.org/protobuf/types/known/timestamppb"

	flowstatev1 "flowstate.dev/client/gen/flowstate/v1"
)

// DESIGN.md section 3: the RPCs of FlowStateService; the two Watch RPCs are server streaming.
var rpcs = []string{
	"CreateFlow", "GetFlow", "ListFlows", "ValidateTransition", "TransitionPhase",
	"UpdatePhaseProgress", "Rollback", "Retry", "GetRecoveryOptions", "PauseFlow", "ResumeFlow",
	"CancelFlow", "ListFlowHistory", "GetFlowDefinition", "WatchFlow", "WatchFlows",
	"CreateFlowDefinition", "ListFlowDefinitions", "SkipPhase", // section 9
	"Heartbeat",                                                                      // section 10 (timers)
	"CountFlows",                                                                     // section 12 (search)
	"CreateWebhook", "ListWebhooks", "DeleteWebhook", "TestWebhook", "ReplayWebhook", // section 12 (webhooks)
	"StartBulkAction", "GetBulkAction", "ListBulkActions", "ListBulkActionResults", "CancelBulkAction", "WatchBulkAction", // section 12 (bulk actions)
	"DecidePhase",                              // section 10 (approvals)
	"GetRetentionPolicy", "SetRetentionPolicy", // section 12 (retention)
	"LinkChildFlow", // issue 21 (child flows)
}
var streamingRPCs = []string{"WatchBulkAction", "WatchFlow", "WatchFlows"}

// DESIGN.md, "Phase states" and "Flow status", in proto order after *_UNSPECIFIED = 0.
var phaseStates = []string{
	"NOT_STARTED", "IN_PROGRESS", "WAITING_VALIDATION", "WAITING_APPROVAL", "COMPLETED", "FAILED",
	"RETRY_NEEDED", "ROLLED_BACK", "SKIPPED",
}
var flowStatuses = []string{
	"INITIALIZED", "ACTIVE", "DATA_GATHERING", "DISCOVERY", "ASSESSMENT_READY", "PLANNING",
	"WAITING_APPROVAL", "RETRY_PENDING", "ERROR_RECOVERY", "COMPLETED", "FAILED", "PAUSED", "CANCELLED",
}

// scalar returns a non-default value for a scalar or enum field.
func scalar(t *testing.T, fd protoreflect.FieldDescriptor) protoreflect.Value {
	switch fd.Kind() {
	case protoreflect.BoolKind:
		return protoreflect.ValueOfBool(true)
	case protoreflect.EnumKind:
		values := fd.Enum().Values()
		return protoreflect.ValueOfEnum(values.Get(values.Len() - 1).Number())
	case protoreflect.Int32Kind, protoreflect.Sint32Kind, protoreflect.Sfixed32Kind:
		return protoreflect.ValueOfInt32(7)
	case protoreflect.Uint32Kind, protoreflect.Fixed32Kind:
		return protoreflect.ValueOfUint32(7)
	case protoreflect.Int64Kind, protoreflect.Sint64Kind, protoreflect.Sfixed64Kind:
		return protoreflect.ValueOfInt64(7)
	case protoreflect.Uint64Kind, protoreflect.Fixed64Kind:
		return protoreflect.ValueOfUint64(7)
	case protoreflect.FloatKind:
		return protoreflect.ValueOfFloat32(1.5)
	case protoreflect.DoubleKind:
		return protoreflect.ValueOfFloat64(1.5)
	case protoreflect.StringKind:
		return protoreflect.ValueOfString(string(fd.Name()) + "-value")
	case protoreflect.BytesKind:
		return protoreflect.ValueOfBytes([]byte{0, 1, 255})
	}
	t.Fatalf("unexpected kind %v of %v", fd.Kind(), fd.FullName())
	return protoreflect.Value{}
}

// fieldsToSet returns every field, except that only the first member of each oneof is chosen.
func fieldsToSet(md protoreflect.MessageDescriptor) []protoreflect.FieldDescriptor {
	var chosen []protoreflect.FieldDescriptor
	seen := map[protoreflect.FullName]bool{}
	fields := md.Fields()
	for i := range fields.Len() {
		fd := fields.Get(i)
		if oneof := fd.ContainingOneof(); oneof != nil {
			if seen[oneof.FullName()] {
				continue
			}
			seen[oneof.FullName()] = true
		}
		chosen = append(chosen, fd)
	}
	return chosen
}

// fill sets every field (one per oneof) to a non-default value, recursively. Repeated and map
// fields get one element, enums their last value; a message type already being filled higher up
// (recursion such as google.protobuf.Struct) is left empty.
func fill(t *testing.T, m protoreflect.Message, stack []protoreflect.FullName) {
	md := m.Descriptor()
	if md.FullName() == "google.protobuf.Any" {
		packed, err := anypb.New(&timestamppb.Timestamp{Seconds: 7, Nanos: 7})
		if err != nil {
			t.Fatal(err)
		}
		proto.Merge(m.Interface(), packed)
		return
	}
	stack = append(slices.Clone(stack), md.FullName())
	child := func(cm protoreflect.Message) {
		if !slices.Contains(stack, cm.Descriptor().FullName()) {
			fill(t, cm, stack)
		}
	}
	for _, fd := range fieldsToSet(md) {
		switch {
		case fd.IsMap():
			entries := m.Mutable(fd).Map()
			key := scalar(t, fd.MapKey()).MapKey()
			if fd.MapValue().Message() != nil {
				value := entries.NewValue()
				child(value.Message())
				entries.Set(key, value)
			} else {
				entries.Set(key, scalar(t, fd.MapValue()))
			}
		case fd.IsList():
			list := m.Mutable(fd).List()
			if fd.Message() != nil {
				element := list.NewElement()
				child(element.Message())
				list.Append(element)
			} else {
				list.Append(scalar(t, fd))
			}
		case fd.Message() != nil:
			child(m.Mutable(fd).Message())
		default:
			m.Set(fd, scalar(t, fd))
		}
	}
}

// unsetFields returns the paths of the fields that fill should have set but did not.
func unsetFields(m protoreflect.Message, path string) []string {
	if strings.HasPrefix(string(m.Descriptor().FullName()), "google.protobuf.") {
		return nil
	}
	var missing []string
	for _, fd := range fieldsToSet(m.Descriptor()) {
		where := path + "." + string(fd.Name())
		switch {
		case !m.Has(fd):
			missing = append(missing, where)
		case fd.IsMap():
		case fd.IsList() && fd.Message() != nil:
			list := m.Get(fd).List()
			for i := range list.Len() {
				missing = append(missing, unsetFields(list.Get(i).Message(), where)...)
			}
		case fd.Message() != nil:
			missing = append(missing, unsetFields(m.Get(fd).Message(), where)...)
		}
	}
	return missing
}

func fullFlow(t *testing.T) *flowstatev1.Flow {
	flow := &flowstatev1.Flow{}
	fill(t, flow.ProtoReflect(), nil)
	if missing := unsetFields(flow.ProtoReflect(), "Flow"); len(missing) > 0 {
		t.Fatalf("fill left fields unset: %v", missing)
	}
	return flow
}

func TestFlowBinaryRoundTrip(t *testing.T) {
	flow := fullFlow(t)
	marshal := proto.MarshalOptions{Deterministic: true}
	data, err := marshal.Marshal(flow)
	if err != nil {
		t.Fatal(err)
	}
	decoded := &flowstatev1.Flow{}
	if err := proto.Unmarshal(data, decoded); err != nil {
		t.Fatal(err)
	}
	if !proto.Equal(decoded, flow) {
		t.Fatalf("round trip changed the flow:\n got %v\nwant %v", decoded, flow)
	}
	again, err := marshal.Marshal(decoded)
	if err != nil {
		t.Fatal(err)
	}
	if string(again) != string(data) {
		t.Fatal("re-encoding the decoded flow gives different bytes")
	}
	if missing := unsetFields(decoded.ProtoReflect(), "Flow"); len(missing) > 0 {
		t.Fatalf("fields lost in the round trip: %v", missing)
	}
}

func TestFlowJSONRoundTrip(t *testing.T) {
	flow := fullFlow(t)
	data, err := protojson.Marshal(flow)
	if err != nil {
		t.Fatal(err)
	}
	decoded := &flowstatev1.Flow{}
	if err := protojson.Unmarshal(data, decoded); err != nil {
		t.Fatal(err)
	}
	if !proto.Equal(decoded, flow) {
		t.Fatalf("JSON round trip changed the flow:\n got %v\nwant %v", decoded, flow)
	}
}

func enumNames(t *testing.T, ed protoreflect.EnumDescriptor, prefix string) []string {
	values := ed.Values()
	var names []string
	for i := range values.Len() {
		v := values.Get(i)
		if int(v.Number()) != i {
			t.Fatalf("%v has number %d at position %d", v.FullName(), v.Number(), i)
		}
		names = append(names, strings.TrimPrefix(string(v.Name()), prefix))
	}
	return names
}

func TestEnumsMatchDesign(t *testing.T) {
	got := enumNames(t, flowstatev1.PhaseState(0).Descriptor(), "PHASE_STATE_")
	if want := append([]string{"UNSPECIFIED"}, phaseStates...); !slices.Equal(got, want) {
		t.Errorf("PhaseState = %v, want %v", got, want)
	}
	got = enumNames(t, flowstatev1.FlowStatus(0).Descriptor(), "FLOW_STATUS_")
	if want := append([]string{"UNSPECIFIED"}, flowStatuses...); !slices.Equal(got, want) {
		t.Errorf("FlowStatus = %v, want %v", got, want)
	}
}

func TestServiceHasEveryRPC(t *testing.T) {
	service := flowstatev1.File_flowstate_v1_flow_service_proto.Services().ByName("FlowStateService")
	if service == nil {
		t.Fatal("no FlowStateService in flowstate/v1/flow_service.proto")
	}
	var names, streaming []string
	methods := service.Methods()
	for i := range methods.Len() {
		m := methods.Get(i)
		names = append(names, string(m.Name()))
		if m.IsStreamingServer() {
			streaming = append(streaming, string(m.Name()))
		}
		if m.IsStreamingClient() {
			t.Errorf("%v is client streaming", m.FullName())
		}
	}
	sort.Strings(names)
	want := slices.Sorted(slices.Values(rpcs))
	if !slices.Equal(names, want) {
		t.Errorf("methods = %v, want %v", names, want)
	}
	sort.Strings(streaming)
	if !slices.Equal(streaming, streamingRPCs) {
		t.Errorf("server streaming methods = %v, want %v", streaming, streamingRPCs)
	}
}

// server checks at compile time that a server embedding the generated base type implements the
// service interface.
type server struct {
	flowstatev1.UnimplementedFlowStateServiceServer
}

var _ flowstatev1.FlowStateServiceServer = server{}

func TestGRPCClientAndServer(t *testing.T) {
	// grpc.NewClient does not connect until the first call; no call is made here.
	conn, err := grpc.NewClient("127.0.0.1:1", grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	var client flowstatev1.FlowStateServiceClient = flowstatev1.NewFlowStateServiceClient(conn)
	if client == nil {
		t.Fatal("NewFlowStateServiceClient returned nil")
	}
	s := grpc.NewServer()
	flowstatev1.RegisterFlowStateServiceServer(s, server{})
	if _, ok := s.GetServiceInfo()["flowstate.v1.FlowStateService"]; !ok {
		t.Fatal("FlowStateService not registered")
	}
}
