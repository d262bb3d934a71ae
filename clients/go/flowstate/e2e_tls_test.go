package flowstate_test

// End-to-end TLS tests against the harness's second server, which requires TLS and client
// certificates (scripts/with_test_server.py --tls exports FLOWSTATE_TEST_TLS_*).

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"os"
	"testing"
	"time"

	"flowstate.dev/client/flowstate"
	flowstatev1 "flowstate.dev/client/gen/flowstate/v1"
)

type tlsTestServer struct {
	address, token string
	roots          *x509.CertPool
	clientCert     tls.Certificate
}

// tlsServer returns the harness's mTLS server, failing the test under CI and skipping it
// otherwise when the harness was started without --tls.
func tlsServer(t *testing.T) *tlsTestServer {
	t.Helper()
	server(t) // the same policy as every end-to-end test when there is no harness at all
	address := os.Getenv("FLOWSTATE_TEST_TLS_ADDRESS")
	if address == "" {
		if inCI {
			t.Fatal("CI=true but FLOWSTATE_TEST_TLS_ADDRESS is not set: run the harness with --tls")
		}
		t.Skip("FLOWSTATE_TEST_TLS_ADDRESS is not set (scripts/with_test_server.py --tls)")
	}
	ca, err := os.ReadFile(os.Getenv("FLOWSTATE_TEST_TLS_CA_FILE"))
	if err != nil {
		t.Fatal(err)
	}
	roots := x509.NewCertPool()
	if !roots.AppendCertsFromPEM(ca) {
		t.Fatal("FLOWSTATE_TEST_TLS_CA_FILE holds no certificate")
	}
	cert, err := tls.LoadX509KeyPair(os.Getenv("FLOWSTATE_TEST_TLS_CLIENT_CERT_FILE"), os.Getenv("FLOWSTATE_TEST_TLS_CLIENT_KEY_FILE"))
	if err != nil {
		t.Fatal(err)
	}
	return &tlsTestServer{address: address, token: os.Getenv("FLOWSTATE_TEST_TLS_TOKEN"), roots: roots, clientCert: cert}
}

func tlsClient(t *testing.T, s *tlsTestServer, cfg *tls.Config) *flowstate.Client {
	t.Helper()
	once := flowstate.RetryPolicy{MaxAttempts: 1, Deadline: -1}
	client, err := flowstate.NewClient(s.address, flowstate.WithToken(s.token), flowstate.WithTLS(cfg), flowstate.WithRetryPolicy(once), flowstate.WithTimeout(20*time.Second))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = client.Close() })
	return client
}

func TestE2ETLSWithClientCertificate(t *testing.T) {
	s := tlsServer(t)
	ctx := e2eContext(t, 60*time.Second)
	client := tlsClient(t, s, &tls.Config{RootCAs: s.roots, Certificates: []tls.Certificate{s.clientCert}, MinVersion: tls.VersionTLS12})
	created, err := client.CreateFlow(ctx, &flowstatev1.CreateFlowRequest{DefinitionName: "discovery"})
	if err != nil {
		t.Fatal(err)
	}
	got, err := client.GetFlow(ctx, &flowstatev1.GetFlowRequest{FlowId: created.GetFlow().GetFlowId()})
	if err != nil {
		t.Fatal(err)
	}
	if got.GetFlow().GetVersion() != created.GetFlow().GetVersion() {
		t.Fatalf("read version %d, created %d", got.GetFlow().GetVersion(), created.GetFlow().GetVersion())
	}
}

func TestE2ETLSRefusals(t *testing.T) {
	s := tlsServer(t)
	cases := map[string]*tls.Config{
		// The server requires a client certificate (mTLS).
		"without a client certificate": {RootCAs: s.roots, MinVersion: tls.VersionTLS12},
		// The system roots do not include the harness's throwaway CA.
		"with a CA that did not sign the server": {Certificates: []tls.Certificate{s.clientCert}, MinVersion: tls.VersionTLS12},
	}
	for name, cfg := range cases {
		t.Run(name, func(t *testing.T) {
			ctx := e2eContext(t, 60*time.Second)
			_, err := tlsClient(t, s, cfg).GetFlowDefinition(ctx, &flowstatev1.GetFlowDefinitionRequest{Name: "discovery"})
			if !errors.Is(err, flowstate.ErrUnavailable) {
				t.Fatalf("want UNAVAILABLE (the handshake failed), got %v", err)
			}
		})
	}
}
