package flowstate_test

import (
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/protobuf/proto"

	"flowstate.dev/client/flowstate"
	flowstatev1 "flowstate.dev/client/gen/flowstate/v1"
)

// TestE2ERetentionPolicy sets, reads and clears tenant A's retention policy against a real
// server with a retention:admin token; flows:admin is not enough (docs/retention.md).
func TestE2ERetentionPolicy(t *testing.T) {
	srv := server(t)
	ctx := e2eContext(t, 60*time.Second)
	retention := e2eClient(t, srv.retentionToken)

	stored, err := retention.SetRetentionPolicy(ctx, &flowstatev1.SetRetentionPolicyRequest{RetainDays: 90})
	if err != nil {
		t.Fatal(err)
	}
	policy := stored.GetPolicy()
	if policy.GetRetainDays() != 90 || policy.GetUpdatedBy() != "retention-admin" || policy.GetUpdateTime() == nil {
		t.Fatalf("stored policy = %v", policy)
	}
	read, err := retention.GetRetentionPolicy(ctx, nil)
	if err != nil {
		t.Fatal(err)
	}
	if !proto.Equal(read.GetPolicy(), policy) {
		t.Fatalf("read %v, stored %v", read.GetPolicy(), policy)
	}
	for _, days := range []int32{-1, 36501} {
		_, err := retention.SetRetentionPolicy(ctx, &flowstatev1.SetRetentionPolicyRequest{RetainDays: days})
		fe := expectError(t, err, flowstate.ErrMalformedRequest, codes.InvalidArgument)
		if len(fe.FieldViolations) != 1 || fe.FieldViolations[0].GetField() != "retain_days" {
			t.Fatalf("%d: violations %v", days, fe.FieldViolations)
		}
	}
	admin := e2eClient(t, srv.adminToken) // flows:admin does not imply retention:admin
	_, err = admin.SetRetentionPolicy(ctx, &flowstatev1.SetRetentionPolicyRequest{RetainDays: 1})
	expectError(t, err, flowstate.ErrPermissionDenied, codes.PermissionDenied)
	_, err = admin.GetRetentionPolicy(ctx, &flowstatev1.GetRetentionPolicyRequest{})
	expectError(t, err, flowstate.ErrPermissionDenied, codes.PermissionDenied)

	cleared, err := retention.SetRetentionPolicy(ctx, &flowstatev1.SetRetentionPolicyRequest{RetainDays: 0})
	if err != nil {
		t.Fatal(err)
	}
	if cleared.GetPolicy().GetRetainDays() != 0 || cleared.GetPolicy().GetUpdateTime() != nil {
		t.Fatalf("cleared policy = %v", cleared.GetPolicy())
	}
	after, err := retention.GetRetentionPolicy(ctx, nil)
	if err != nil {
		t.Fatal(err)
	}
	if after.GetPolicy().GetRetainDays() != 0 {
		t.Fatalf("after clearing: %v", after.GetPolicy())
	}
}
