// Command loadgen is the Flowstate benchmark's load generator.
//
// It drives a FlowStateService (the real server, or the bench's bare reference server that
// implements the same RPCs trivially) from a separate, compiled process so that the load
// generator is not the bottleneck. Every mode is bounded in time, talks to 127.0.0.1 only, and
// prints one JSON object on stdout for bench/run.py to read.
//
//	loadgen unary  -rpc transition|progress|validate|getflow -concurrency N -duration D [-rate R] ...
//	loadgen fanout -flow ID -watchers N -duration D ...
//	loadgen idle   -flow ID -streams N -hold D ...
package main

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"os"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	flowstatev1 "flowstate.dev/client/gen/flowstate/v1"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
)

const phase = "data_import"

// callTimeout bounds every unary call: a stuck server shows up as errors, never as a hang.
const callTimeout = 10 * time.Second

func main() {
	if len(os.Args) < 2 {
		fatalf("usage: loadgen unary|fanout|idle [flags]")
	}
	var err error
	switch os.Args[1] {
	case "unary":
		err = runUnary(os.Args[2:])
	case "fanout":
		err = runFanout(os.Args[2:])
	case "idle":
		err = runIdle(os.Args[2:])
	default:
		err = fmt.Errorf("unknown mode %q", os.Args[1])
	}
	if err != nil {
		fatalf("loadgen %s: %v", os.Args[1], err)
	}
}

func fatalf(format string, args ...any) {
	fmt.Fprintf(os.Stderr, format+"\n", args...)
	os.Exit(1)
}

// common holds the flags every mode shares.
type common struct {
	addr  string
	token string
}

func (c *common) register(fs *flag.FlagSet) {
	fs.StringVar(&c.addr, "addr", "127.0.0.1:50051", "server address (loopback only)")
	fs.StringVar(&c.token, "token", os.Getenv("FLOWSTATE_BENCH_TOKEN"), "bearer token (default $FLOWSTATE_BENCH_TOKEN)")
}

func (c *common) check() error {
	if !strings.HasPrefix(c.addr, "127.0.0.1:") && !strings.HasPrefix(c.addr, "localhost:") {
		return fmt.Errorf("address %q is not on the loopback interface", c.addr)
	}
	return nil
}

// ctx returns a context carrying the bearer token, if any.
func (c *common) ctx(parent context.Context) context.Context {
	if c.token == "" {
		return parent
	}
	return metadata.AppendToOutgoingContext(parent, "authorization", "Bearer "+c.token)
}

func dial(addr string) (*grpc.ClientConn, error) {
	return grpc.NewClient(addr,
		grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithDefaultCallOptions(grpc.MaxCallRecvMsgSize(16<<20)),
	)
}

func dialN(addr string, n int) ([]*grpc.ClientConn, error) {
	conns := make([]*grpc.ClientConn, 0, n)
	for i := 0; i < n; i++ {
		conn, err := dial(addr)
		if err != nil {
			closeAll(conns)
			return nil, err
		}
		conn.Connect()
		conns = append(conns, conn)
	}
	return conns, nil
}

func closeAll(conns []*grpc.ClientConn) {
	for _, c := range conns {
		_ = c.Close()
	}
}

func splitIDs(s string) []string {
	var ids []string
	for _, id := range strings.Split(s, ",") {
		if id = strings.TrimSpace(id); id != "" {
			ids = append(ids, id)
		}
	}
	return ids
}

func nonce() string {
	b := make([]byte, 6)
	if _, err := rand.Read(b); err != nil {
		panic(err)
	}
	return hex.EncodeToString(b)
}

func emit(v any) error {
	enc := json.NewEncoder(os.Stdout)
	return enc.Encode(v)
}

// ---------------------------------------------------------------------------------------------
// Latency summaries

func ms(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }

// percentile returns the nearest-rank percentile of sorted durations.
func percentile(sorted []time.Duration, p float64) time.Duration {
	if len(sorted) == 0 {
		return 0
	}
	rank := int(p/100*float64(len(sorted))+0.999999) - 1
	if rank < 0 {
		rank = 0
	}
	if rank >= len(sorted) {
		rank = len(sorted) - 1
	}
	return sorted[rank]
}

func sortDurations(d []time.Duration) {
	sort.Slice(d, func(i, j int) bool { return d[i] < d[j] })
}

func mean(d []time.Duration) time.Duration {
	if len(d) == 0 {
		return 0
	}
	var sum time.Duration
	for _, x := range d {
		sum += x
	}
	return sum / time.Duration(len(d))
}

// errorLog counts errors, per gRPC code too, and keeps a few distinct messages.
type errorLog struct {
	mu      sync.Mutex
	count   int
	samples map[string]int
	byCode  map[string]int
}

func (e *errorLog) add(err error) {
	e.mu.Lock()
	defer e.mu.Unlock()
	e.count++
	if e.samples == nil {
		e.samples = map[string]int{}
		e.byCode = map[string]int{}
	}
	msg := err.Error()
	e.byCode[status.Code(err).String()]++
	if st, ok := status.FromError(err); ok {
		msg = st.Code().String() + ": " + st.Message()
	}
	if len(msg) > 200 {
		msg = msg[:200]
	}
	if _, seen := e.samples[msg]; seen || len(e.samples) < 5 {
		e.samples[msg]++
	}
}

// ---------------------------------------------------------------------------------------------
// unary: closed-loop load, each worker one call at a time

type unaryResult struct {
	Mode         string         `json:"mode"`
	RPC          string         `json:"rpc"`
	Concurrency  int            `json:"concurrency"`
	Connections  int            `json:"connections"`
	Requests     int            `json:"requests"`
	Errors       int            `json:"errors"`
	ErrorSamples map[string]int `json:"error_samples"`
	ErrorsByCode map[string]int `json:"errors_by_code"`
	ElapsedS     float64        `json:"elapsed_s"`
	Throughput   float64        `json:"throughput"`
	P50Ms        float64        `json:"p50_ms"`
	P99Ms        float64        `json:"p99_ms"`
	MeanMs       float64        `json:"mean_ms"`
	MaxMs        float64        `json:"max_ms"`
	CPUS         float64        `json:"cpu_s"` // this process's user + system CPU, whole run
}

// cpuSeconds is the user + system CPU time of this process so far.
func cpuSeconds() float64 {
	var usage syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &usage); err != nil {
		return 0
	}
	return time.Duration(usage.Utime.Nano() + usage.Stime.Nano()).Seconds()
}

// caller issues one request; it returns the error of the call.
type caller func(ctx context.Context, seq int) error

func runUnary(args []string) error {
	fs := flag.NewFlagSet("unary", flag.ExitOnError)
	var c common
	c.register(fs)
	rpc := fs.String("rpc", "validate", "transition | progress | validate | getflow")
	concurrency := fs.Int("concurrency", 1, "concurrent clients (closed loop)")
	conns := fs.Int("conns", 0, "connections (default: one per client)")
	duration := fs.Duration("duration", 5*time.Second, "measured time")
	warmup := fs.Duration("warmup", time.Second, "unmeasured time before it")
	flows := fs.String("flows", "", "comma-separated flow ids; client i uses flow i mod len")
	rate := fs.Float64("rate", 0, "calls per second of all clients together, evenly paced (0: closed loop, each call right after the previous one)")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if err := c.check(); err != nil {
		return err
	}
	ids := splitIDs(*flows)
	if *rpc != "validate" && len(ids) == 0 {
		return fmt.Errorf("-rpc %s needs -flows", *rpc)
	}
	if *conns <= 0 {
		*conns = *concurrency
	}
	pool, err := dialN(c.addr, *conns)
	if err != nil {
		return err
	}
	defer closeAll(pool)

	run := nonce()
	base := c.ctx(context.Background())
	callers := make([]caller, *concurrency)
	for w := 0; w < *concurrency; w++ {
		client := flowstatev1.NewFlowStateServiceClient(pool[w%len(pool)])
		var flowID string
		if len(ids) > 0 {
			flowID = ids[w%len(ids)]
		}
		callers[w], err = newCaller(base, client, *rpc, flowID, fmt.Sprintf("%s-%d", run, w))
		if err != nil {
			return err
		}
	}

	start := time.Now()
	measureFrom := start.Add(*warmup)
	end := measureFrom.Add(*duration)
	var errs errorLog
	lat := make([][]time.Duration, *concurrency)
	// With -rate, each client starts a call every interval (staggered across clients); a call
	// that overruns its slot delays the next one, which then starts at once (no catch-up burst).
	var interval time.Duration
	if *rate > 0 {
		interval = time.Duration(float64(*concurrency) / *rate * float64(time.Second))
	}
	var wg sync.WaitGroup
	for w := 0; w < *concurrency; w++ {
		wg.Add(1)
		go func(w int) {
			defer wg.Done()
			mine := make([]time.Duration, 0, 4096)
			next := start.Add(interval * time.Duration(w) / time.Duration(*concurrency))
			for seq := 0; ; seq++ {
				if interval > 0 {
					if wait := time.Until(next); wait > 0 {
						time.Sleep(wait)
					}
					next = next.Add(interval)
					if now := time.Now(); next.Before(now) {
						next = now
					}
				}
				t0 := time.Now()
				if !t0.Before(end) {
					break
				}
				ctx, cancel := context.WithTimeout(base, callTimeout)
				err := callers[w](ctx, seq)
				cancel()
				t1 := time.Now()
				if t0.Before(measureFrom) || t1.After(end) {
					continue
				}
				if err != nil {
					errs.add(err)
					continue
				}
				mine = append(mine, t1.Sub(t0))
			}
			lat[w] = mine
		}(w)
	}
	wg.Wait()

	var all []time.Duration
	for _, l := range lat {
		all = append(all, l...)
	}
	sortDurations(all)
	elapsed := duration.Seconds()
	res := unaryResult{
		Mode: "unary", RPC: *rpc, Concurrency: *concurrency, Connections: len(pool),
		Requests: len(all), Errors: errs.count, ErrorSamples: errs.samples, ErrorsByCode: errs.byCode,
		ElapsedS: elapsed, Throughput: float64(len(all)) / elapsed,
		P50Ms: ms(percentile(all, 50)), P99Ms: ms(percentile(all, 99)),
		MeanMs: ms(mean(all)), CPUS: cpuSeconds(),
	}
	if len(all) > 0 {
		res.MaxMs = ms(all[len(all)-1])
	}
	return emit(res)
}

func newCaller(base context.Context, client flowstatev1.FlowStateServiceClient, rpc, flowID, worker string) (caller, error) {
	switch rpc {
	case "validate":
		req := &flowstatev1.ValidateTransitionRequest{
			DefinitionName: "discovery",
			Transition: &flowstatev1.ValidateTransitionRequest_PhaseTransition{
				PhaseTransition: &flowstatev1.PhaseTransition{
					Phase:     phase,
					FromState: flowstatev1.PhaseState_PHASE_STATE_IN_PROGRESS,
					ToState:   flowstatev1.PhaseState_PHASE_STATE_COMPLETED,
				},
			},
		}
		return func(ctx context.Context, _ int) error {
			_, err := client.ValidateTransition(ctx, req)
			return err
		}, nil
	case "getflow":
		req := &flowstatev1.GetFlowRequest{FlowId: flowID}
		return func(ctx context.Context, _ int) error {
			_, err := client.GetFlow(ctx, req)
			return err
		}, nil
	case "progress":
		// Every client reports in-phase progress on the same IN_PROGRESS phase: always legal,
		// so racing writers on one hot flow never refuse each other. The values come from one
		// counter shared by all clients, so two writes in a row never carry the same value
		// (a repeat of the current value is a no-op that writes nothing).
		return func(ctx context.Context, seq int) error {
			n := progressCounter.Add(1)
			_, err := client.UpdatePhaseProgress(ctx, &flowstatev1.UpdatePhaseProgressRequest{
				FlowId:    flowID,
				Phase:     phase,
				Progress:  float64(n%progressSteps) / progressSteps,
				RequestId: fmt.Sprintf("%s-%d", worker, seq),
			})
			return err
		}, nil
	case "transition":
		t := &toggler{client: client, flowID: flowID}
		ctx, cancel := context.WithTimeout(base, callTimeout)
		defer cancel()
		if err := t.sync(ctx); err != nil {
			return nil, fmt.Errorf("reading flow %s: %w", flowID, err)
		}
		return func(ctx context.Context, seq int) error {
			_, err := t.step(ctx, fmt.Sprintf("%s-%d", worker, seq))
			return err
		}, nil
	}
	return nil, fmt.Errorf("unknown -rpc %q", rpc)
}

// progressCounter numbers the progress reports of all clients; progressSteps is the resolution.
var progressCounter atomic.Uint64

const progressSteps = 10007

// toggler moves one flow's data_import phase IN_PROGRESS -> WAITING_APPROVAL -> IN_PROGRESS
// ("changes requested") -> ...: a loop of legal transitions that never ends the flow and
// writes one history entry per step.
type toggler struct {
	client flowstatev1.FlowStateServiceClient
	flowID string
	state  flowstatev1.PhaseState
}

// sync reads the phase's state (not measured: only at start and after a refusal).
func (t *toggler) sync(ctx context.Context) error {
	resp, err := t.client.GetFlow(ctx, &flowstatev1.GetFlowRequest{FlowId: t.flowID})
	if err != nil {
		return err
	}
	for _, p := range resp.GetFlow().GetPhases() {
		if p.GetName() == phase {
			t.state = p.GetState()
			return nil
		}
	}
	return fmt.Errorf("flow %s has no phase %s", t.flowID, phase)
}

func (t *toggler) target() flowstatev1.PhaseState {
	if t.state == flowstatev1.PhaseState_PHASE_STATE_IN_PROGRESS {
		return flowstatev1.PhaseState_PHASE_STATE_WAITING_APPROVAL
	}
	return flowstatev1.PhaseState_PHASE_STATE_IN_PROGRESS
}

// step sends one transition; it returns the flow's new version.
func (t *toggler) step(ctx context.Context, requestID string) (int64, error) {
	target := t.target()
	resp, err := t.client.TransitionPhase(ctx, &flowstatev1.TransitionPhaseRequest{
		FlowId:      t.flowID,
		Phase:       phase,
		TargetState: target,
		Reason:      "bench",
		RequestId:   requestID,
	})
	if err != nil {
		if status.Code(err) == codes.FailedPrecondition {
			// Someone else moved the phase: re-read it so the next step is legal again.
			_ = t.sync(ctx)
		}
		return 0, err
	}
	t.state = target
	return resp.GetFlow().GetVersion(), nil
}

// ---------------------------------------------------------------------------------------------
// fanout: N watchers on one flow; one writer commits changes; time until every watcher has it

type fanoutResult struct {
	Mode           string         `json:"mode"`
	Watchers       int            `json:"watchers"`
	Connections    int            `json:"connections"`
	SetupS         float64        `json:"setup_s"`
	Events         int            `json:"events"`
	CompleteEvents int            `json:"complete_events"`
	MissedDelivery int            `json:"missed_deliveries"`
	Errors         int            `json:"errors"`
	ErrorSamples   map[string]int `json:"error_samples"`
	AllP50Ms       float64        `json:"all_p50_ms"`
	AllP99Ms       float64        `json:"all_p99_ms"`
	FirstP50Ms     float64        `json:"first_p50_ms"`
	EachP50Ms      float64        `json:"each_p50_ms"`
	EachP99Ms      float64        `json:"each_p99_ms"`
	WriteP50Ms     float64        `json:"write_p50_ms"`
	WriteP99Ms     float64        `json:"write_p99_ms"`
	// AllMs lists, per fully delivered event, the time until every watcher had it (so that
	// the runner can pool percentiles over runs: one run has only tens of events).
	AllMs []float64 `json:"all_ms"`
}

// event is one change the writer commits, and what the watchers saw of it.
type event struct {
	sent     time.Time
	received atomic.Int32
	done     chan struct{}
	mu       sync.Mutex
	arrivals []time.Duration
}

type eventBook struct {
	mu     sync.RWMutex
	events map[int64]*event
	total  int32
}

func (b *eventBook) expect(version int64) *event {
	ev := &event{done: make(chan struct{}), arrivals: make([]time.Duration, 0, b.total)}
	b.mu.Lock()
	b.events[version] = ev
	b.mu.Unlock()
	return ev
}

func (b *eventBook) arrived(version int64, at time.Time) {
	b.mu.RLock()
	ev := b.events[version]
	b.mu.RUnlock()
	if ev == nil {
		return
	}
	ev.mu.Lock()
	ev.arrivals = append(ev.arrivals, at.Sub(ev.sent))
	ev.mu.Unlock()
	if ev.received.Add(1) == b.total {
		close(ev.done)
	}
}

// watchers opens n WatchFlow streams over conns; each calls onEvent for every change event.
// It returns once every stream has delivered its first event (the snapshot), with the highest
// version seen.
func openWatchers(ctx context.Context, c *common, conns []*grpc.ClientConn, flowID string, n int,
	onEvent func(version int64, at time.Time), errs *errorLog,
) (int64, error) {
	var ready sync.WaitGroup
	var snapshotVersion atomic.Int64
	var failed atomic.Int32
	for i := 0; i < n; i++ {
		ready.Add(1)
		client := flowstatev1.NewFlowStateServiceClient(conns[i%len(conns)])
		go func() {
			first := true
			defer func() {
				if first {
					ready.Done()
				}
			}()
			stream, err := client.WatchFlow(c.ctx(ctx), &flowstatev1.WatchFlowRequest{FlowId: flowID, KeepOpen: true})
			if err != nil {
				failed.Add(1)
				errs.add(err)
				return
			}
			for {
				resp, err := stream.Recv()
				if err != nil {
					if ctx.Err() == nil && err != io.EOF {
						errs.add(err)
					}
					if first {
						failed.Add(1)
					}
					return
				}
				at := time.Now()
				ev := resp.GetEvent()
				if first {
					first = false
					for {
						cur := snapshotVersion.Load()
						if ev.GetFlowVersion() <= cur || snapshotVersion.CompareAndSwap(cur, ev.GetFlowVersion()) {
							break
						}
					}
					ready.Done()
					continue
				}
				if ev.GetHeartbeat() != nil {
					continue
				}
				onEvent(ev.GetFlowVersion(), at)
			}
		}()
	}
	ready.Wait()
	if f := failed.Load(); f > 0 {
		errs.mu.Lock()
		defer errs.mu.Unlock()
		return 0, fmt.Errorf("%d of %d watch streams failed to open: %v", f, n, errs.samples)
	}
	return snapshotVersion.Load(), nil
}

func runFanout(args []string) error {
	fs := flag.NewFlagSet("fanout", flag.ExitOnError)
	var c common
	c.register(fs)
	flowID := fs.String("flow", "", "the watched flow (its data_import phase must be IN_PROGRESS or WAITING_APPROVAL)")
	watchers := fs.Int("watchers", 1, "subscribed watchers")
	perConn := fs.Int("streams-per-conn", 100, "watch streams per connection")
	duration := fs.Duration("duration", 5*time.Second, "time spent committing events")
	maxEvents := fs.Int("max-events", 200, "stop after this many events")
	eventTimeout := fs.Duration("event-timeout", 5*time.Second, "give up waiting for an event's deliveries after this")
	gap := fs.Duration("gap", 10*time.Millisecond, "pause between one event's full delivery and the next write")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if err := c.check(); err != nil {
		return err
	}
	if *flowID == "" {
		return fmt.Errorf("-flow is required")
	}
	nConns := (*watchers + *perConn - 1) / *perConn
	conns, err := dialN(c.addr, nConns)
	if err != nil {
		return err
	}
	defer closeAll(conns)
	writerConn, err := dial(c.addr)
	if err != nil {
		return err
	}
	defer writerConn.Close()

	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var errs errorLog
	book := &eventBook{events: map[int64]*event{}, total: int32(*watchers)}
	setupStart := time.Now()
	if _, err := openWatchers(ctx, &c, conns, *flowID, *watchers, book.arrived, &errs); err != nil {
		return err
	}
	setup := time.Since(setupStart)

	writer := &toggler{client: flowstatev1.NewFlowStateServiceClient(writerConn), flowID: *flowID}
	base := c.ctx(context.Background())
	{
		sctx, scancel := context.WithTimeout(base, callTimeout)
		err := writer.sync(sctx)
		scancel()
		if err != nil {
			return fmt.Errorf("reading flow: %w", err)
		}
	}
	run := nonce()
	var allDone, first, each, writes []time.Duration
	events, complete, missed := 0, 0, 0
	deadline := time.Now().Add(*duration)
	var version int64
	{
		sctx, scancel := context.WithTimeout(base, callTimeout)
		resp, err := writer.client.GetFlow(sctx, &flowstatev1.GetFlowRequest{FlowId: *flowID})
		scancel()
		if err != nil {
			return err
		}
		version = resp.GetFlow().GetVersion()
	}
	for events < *maxEvents && time.Now().Before(deadline) {
		ev := book.expect(version + 1)
		ev.sent = time.Now()
		wctx, wcancel := context.WithTimeout(base, callTimeout)
		got, err := writer.step(wctx, fmt.Sprintf("%s-%d", run, events))
		wcancel()
		if err != nil {
			errs.add(err)
			return fmt.Errorf("writer: %w (errors: %v)", err, errs.samples)
		}
		writes = append(writes, time.Since(ev.sent))
		if got != version+1 {
			return fmt.Errorf("writer: flow moved to version %d, expected %d (another writer?)", got, version+1)
		}
		version = got
		events++
		select {
		case <-ev.done:
			complete++
		case <-time.After(*eventTimeout):
		}
		ev.mu.Lock()
		arr := append([]time.Duration(nil), ev.arrivals...)
		ev.mu.Unlock()
		missed += *watchers - len(arr)
		sortDurations(arr)
		if len(arr) == *watchers {
			allDone = append(allDone, arr[len(arr)-1])
		}
		if len(arr) > 0 {
			first = append(first, arr[0])
		}
		each = append(each, arr...)
		time.Sleep(*gap)
	}
	cancel()
	allMs := make([]float64, len(allDone))
	for i, d := range allDone {
		allMs[i] = ms(d)
	}
	for _, d := range [][]time.Duration{allDone, first, each, writes} {
		sortDurations(d)
	}
	return emit(fanoutResult{
		Mode: "fanout", Watchers: *watchers, Connections: nConns, SetupS: setup.Seconds(),
		Events: events, CompleteEvents: complete, MissedDelivery: missed,
		Errors: errs.count, ErrorSamples: errs.samples,
		AllP50Ms: ms(percentile(allDone, 50)), AllP99Ms: ms(percentile(allDone, 99)),
		FirstP50Ms: ms(percentile(first, 50)),
		EachP50Ms:  ms(percentile(each, 50)), EachP99Ms: ms(percentile(each, 99)),
		WriteP50Ms: ms(percentile(writes, 50)), WriteP99Ms: ms(percentile(writes, 99)),
		AllMs: allMs,
	})
}

// ---------------------------------------------------------------------------------------------
// idle: hold N open watch streams until stdin closes (the runner measures server memory)

type idleReady struct {
	Mode        string  `json:"mode"`
	Streams     int     `json:"streams"`
	Connections int     `json:"connections"`
	SetupS      float64 `json:"setup_s"`
}

func runIdle(args []string) error {
	fs := flag.NewFlagSet("idle", flag.ExitOnError)
	var c common
	c.register(fs)
	flowID := fs.String("flow", "", "the watched flow")
	streams := fs.Int("streams", 100, "idle watch streams to hold open")
	perConn := fs.Int("streams-per-conn", 100, "watch streams per connection")
	hold := fs.Duration("hold", time.Minute, "close the streams after this even if stdin stays open")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if err := c.check(); err != nil {
		return err
	}
	nConns := (*streams + *perConn - 1) / *perConn
	conns, err := dialN(c.addr, nConns)
	if err != nil {
		return err
	}
	defer closeAll(conns)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var errs errorLog
	start := time.Now()
	if _, err := openWatchers(ctx, &c, conns, *flowID, *streams, func(int64, time.Time) {}, &errs); err != nil {
		return err
	}
	if err := emit(idleReady{Mode: "idle", Streams: *streams, Connections: nConns, SetupS: time.Since(start).Seconds()}); err != nil {
		return err
	}
	stdinClosed := make(chan struct{})
	go func() {
		_, _ = io.Copy(io.Discard, os.Stdin)
		close(stdinClosed)
	}()
	select {
	case <-stdinClosed:
	case <-time.After(*hold):
	}
	return nil
}
