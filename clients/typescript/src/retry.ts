/**
 * Retry policy of the client: which failures are retried, how long to wait, when to give up.
 *
 * Unary calls are retried on UNAVAILABLE (the server, the network or the database is
 * unreachable, or the server is shutting down) and on RATE_LIMITED (RESOURCE_EXHAUSTED: the
 * tenant's request budget), each time waiting at least the server's RetryInfo delay. That is safe for mutations because the client
 * sends the *same* `requestId` on every attempt, and the server answers a repeated id with the
 * first response instead of applying the change twice. Every other failure is thrown at once.
 */
import { Code } from "@connectrpc/connect";

import type { FlowstateError } from "./errors.js";

/** Exponential backoff with jitter and an overall deadline. */
export interface RetryPolicy {
  /** Attempts in all, the first included (1 disables retries); `Infinity`: bounded by `deadlineMs`. */
  maxAttempts: number;
  /** Wait before the second attempt, in milliseconds. */
  initialBackoffMs: number;
  /** The longest wait between two attempts, in milliseconds. */
  maxBackoffMs: number;
  /** Growth of the wait from one attempt to the next. */
  multiplier: number;
  /** Relative randomisation of each wait, in [0, 1]. */
  jitter: number;
  /** No attempt starts later than this after the first one, in milliseconds; `Infinity`: no limit. */
  deadlineMs: number;
}

/** Unary calls: 5 attempts within 30 s, 100 ms doubling up to 5 s, ±20 % jitter. */
export const DEFAULT_RETRY_POLICY: Readonly<RetryPolicy> = Object.freeze({
  maxAttempts: 5,
  initialBackoffMs: 100,
  maxBackoffMs: 5_000,
  multiplier: 2,
  jitter: 0.2,
  deadlineMs: 30_000,
});

/**
 * Status streams: keep reconnecting for two minutes of consecutive failures (a server restart, a
 * rolling deploy); the clock restarts whenever an event arrives.
 */
export const DEFAULT_WATCH_RETRY_POLICY: Readonly<RetryPolicy> = Object.freeze({
  maxAttempts: Infinity,
  initialBackoffMs: 100,
  maxBackoffMs: 5_000,
  multiplier: 2,
  jitter: 0.2,
  deadlineMs: 120_000,
});

/** A policy that never retries. */
export const NO_RETRY: Readonly<RetryPolicy> = Object.freeze({ ...DEFAULT_RETRY_POLICY, maxAttempts: 1 });

/** A full policy from defaults and overrides; `false` disables retries. Throws on nonsense. */
export function resolveRetryPolicy(
  overrides: Partial<RetryPolicy> | false | undefined,
  defaults: Readonly<RetryPolicy> = DEFAULT_RETRY_POLICY,
): RetryPolicy {
  const policy: RetryPolicy = overrides === false ? { ...NO_RETRY } : { ...defaults, ...overrides };
  if (!(policy.maxAttempts >= 1)) throw new RangeError("retry.maxAttempts must be at least 1");
  if (policy.initialBackoffMs < 0 || policy.maxBackoffMs < 0 || policy.multiplier < 1) {
    throw new RangeError("retry backoffs must be >= 0 and the multiplier >= 1");
  }
  if (!(policy.jitter >= 0 && policy.jitter <= 1)) throw new RangeError("retry.jitter must be within [0, 1]");
  if (!(policy.deadlineMs > 0)) throw new RangeError("retry.deadlineMs must be positive");
  return policy;
}

/** Milliseconds to wait after failed attempt number `attempt` (1-based), jitter applied. */
export function backoffMs(policy: RetryPolicy, attempt: number, random: () => number = Math.random): number {
  const base = Math.min(policy.maxBackoffMs, policy.initialBackoffMs * policy.multiplier ** Math.max(0, attempt - 1));
  return Math.max(0, base * (1 + policy.jitter * (2 * random() - 1)));
}

/** The attempts of one call (or of one stream's reconnections) under a `RetryPolicy`. */
export class RetryState {
  attempt = 0;
  private start: number;

  constructor(
    private readonly policy: RetryPolicy,
    private readonly now: () => number = () => performance.now(),
  ) {
    this.start = now();
  }

  /** Forget earlier failures (a stream received an event: it was healthy again). */
  reset(): void {
    this.start = this.now();
    this.attempt = 0;
  }

  /** Count one more attempt. */
  begin(): void {
    this.attempt += 1;
  }

  /**
   * The timeout of the attempt about to start: `timeoutMs`, cut to what is left of the deadline.
   * No timeout (undefined or 0) stays none: only the caller's signal bounds the attempt.
   */
  attemptTimeoutMs(timeoutMs: number | undefined): number | undefined {
    if (timeoutMs === undefined || timeoutMs <= 0) return undefined;
    if (!Number.isFinite(this.policy.deadlineMs)) return timeoutMs;
    const left = Math.max(1, Math.floor(this.policy.deadlineMs - (this.now() - this.start)));
    return Math.min(timeoutMs, left);
  }

  /**
   * Milliseconds to wait before the next attempt after `error`, or undefined to give up.
   * `retryable` overrides the decision by gRPC code (streams resume on more errors).
   */
  nextDelayMs(error: FlowstateError, retryable: boolean = retryableUnary(error)): number | undefined {
    if (!retryable) return undefined;
    // The server's RetryInfo is a minimum, even above maxBackoffMs (the deadline still bounds it).
    const minimum = error.retryDelayMs ?? 0;
    return this.nextBackoffMs(minimum);
  }

  /** Milliseconds to wait before the next attempt, or undefined when attempts or time ran out. */
  nextBackoffMs(minimum = 0): number | undefined {
    if (this.attempt >= this.policy.maxAttempts) return undefined;
    const delay = Math.max(minimum, backoffMs(this.policy, Math.max(1, this.attempt)));
    if (Number.isFinite(this.policy.deadlineMs)) {
      const left = this.policy.deadlineMs - (this.now() - this.start);
      if (delay >= left) return undefined;
    }
    return delay;
  }
}

/** Resolves after `ms`, or rejects with the signal's reason as soon as `signal` aborts. */
export function sleep(ms: number, signal?: AbortSignal): Promise<void> {
  return new Promise((resolve, reject) => {
    if (signal?.aborted) {
      reject(signal.reason);
      return;
    }
    const onAbort = (): void => {
      clearTimeout(timer);
      reject(signal?.reason);
    };
    const timer = setTimeout(() => {
      signal?.removeEventListener("abort", onAbort);
      resolve();
    }, ms);
    signal?.addEventListener("abort", onAbort, { once: true });
  });
}

/**
 * Whether a unary call that failed with `error` may be sent again: UNAVAILABLE, or RATE_LIMITED
 * (the tenant's request budget; nothing was applied, and the wait is at least the server's
 * RetryInfo delay).
 */
export function retryableUnary(error: FlowstateError): boolean {
  return error.grpcCode === Code.Unavailable || error.code === "RATE_LIMITED";
}
