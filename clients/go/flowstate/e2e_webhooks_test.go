package flowstate_test

import (
	"testing"
	"time"

	"google.golang.org/grpc/codes"

	"flowstate.dev/client/flowstate"
	flowstatev1 "flowstate.dev/client/gen/flowstate/v1"
)

// TestE2EWebhooksCreateListReplayDelete manages a webhook against a real server. The URL is a
// public address literal (no DNS); the server refuses private targets.
func TestE2EWebhooksCreateListReplayDelete(t *testing.T) {
	srv := server(t)
	ctx := e2eContext(t, 60*time.Second)
	admin := e2eClient(t, srv.adminToken) // flows:admin implies webhooks:admin

	_, err := admin.CreateWebhook(ctx, &flowstatev1.CreateWebhookRequest{Url: "https://10.0.0.1/hook"})
	expectError(t, err, flowstate.ErrMalformedRequest, codes.InvalidArgument)

	_, err = admin.CreateWebhook(ctx, &flowstatev1.CreateWebhookRequest{Url: "https://93.184.216.34/go-hook", Filter: "status = NOPE"})
	bad := expectError(t, err, flowstate.ErrMalformedRequest, codes.InvalidArgument)
	if position, ok := bad.Details["position"].(float64); !ok || position != 9 {
		t.Fatalf("a filter that does not parse: details %v, want position 9", bad.Details)
	}

	filter := `labels.team = "core" AND phase.data_import = COMPLETED`
	created, err := admin.CreateWebhook(ctx, &flowstatev1.CreateWebhookRequest{
		Url:      "https://93.184.216.34/go-hook",
		Statuses: []flowstatev1.FlowStatus{flowstatev1.FlowStatus_FLOW_STATUS_COMPLETED},
		Filter:   filter,
	})
	if err != nil {
		t.Fatal(err)
	}
	if created.GetWebhook().GetFilter() != filter {
		t.Fatalf("filter = %q, want %q", created.GetWebhook().GetFilter(), filter)
	}
	id := created.GetWebhook().GetWebhookId()
	if len(created.GetSecret()) < 10 || created.GetSecret()[:6] != "whsec_" {
		t.Fatalf("secret = %q, want whsec_...", created.GetSecret())
	}
	listed, err := admin.ListWebhooks(ctx, &flowstatev1.ListWebhooksRequest{})
	if err != nil {
		t.Fatal(err)
	}
	found := false
	for _, webhook := range listed.GetWebhooks() {
		found = found || webhook.GetWebhookId() == id
	}
	if !found {
		t.Fatalf("ListWebhooks does not list %s", id)
	}
	replayed, err := admin.ReplayWebhook(ctx, &flowstatev1.ReplayWebhookRequest{WebhookId: id})
	if err != nil {
		t.Fatal(err)
	}
	if replayed.GetWebhook().GetState() != flowstatev1.WebhookState_WEBHOOK_STATE_ACTIVE {
		t.Fatalf("state after replay = %v", replayed.GetWebhook().GetState())
	}
	other := e2eClient(t, srv.otherTenantToken)
	_, err = other.DeleteWebhook(ctx, &flowstatev1.DeleteWebhookRequest{WebhookId: id})
	expectError(t, err, flowstate.ErrPermissionDenied, codes.PermissionDenied) // no webhooks:admin
	if _, err := admin.DeleteWebhook(ctx, &flowstatev1.DeleteWebhookRequest{WebhookId: id}); err != nil {
		t.Fatal(err)
	}
	_, err = admin.DeleteWebhook(ctx, &flowstatev1.DeleteWebhookRequest{WebhookId: id})
	expectError(t, err, flowstate.ErrWebhookNotFound, codes.NotFound)
}
