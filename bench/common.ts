/**
 * Shared between the bench runner (bench/run.ts) and the load generator
 * (bench/load.ts): the configuration the runner hands over, the results the
 * generator reports back over IPC, and a small log-bucket latency histogram.
 */
import type { StageSummary } from "./stages.ts"

export type TargetKind = "harmony" | "ws" | "socketio"
export type ScenarioName = "latency" | "throughput"

export interface LoadConfig {
  /** Which wire protocol/adapters to use. */
  readonly target: TargetKind
  /** A name for progress lines and the table ("harmony-cluster", "raw-ws", ...). */
  readonly label: string
  /** Base URL of the server, e.g. http://127.0.0.1:1234 */
  readonly url: string
  /** Every node's URL when the target runs several (the first is `url`): connections are spread over them. */
  readonly urls?: ReadonlyArray<string>
  readonly chats: number
  readonly members: number
  readonly scenarios: ReadonlyArray<ScenarioName>
  /** Fixed-rate scenario: sends per second across all chats, how long, how much of the start is warm-up. */
  readonly rate: number
  readonly latencySeconds: number
  readonly warmupSeconds: number
  /** Throughput scenario: how long, and how many un-acked sends each connection may have. */
  readonly throughputSeconds: number
  readonly window: number
  /** Message body length in characters (the send timestamp comes first). */
  readonly bodyBytes: number
  /** How long to wait for outstanding acks/deliveries after a scenario stops sending. */
  readonly drainSeconds: number
  /** How long to wait for everything acked to be persisted (Harmony). */
  readonly persistTimeoutSeconds: number
  /** Unique per run: usernames are made from it. */
  readonly runId: string
  /** Processes whose CPU time the generator samples per scenario (name → pids). */
  readonly cpuPids: Readonly<Record<string, ReadonlyArray<number>>>
}

export interface LatencySummary {
  readonly count: number
  readonly p50: number
  readonly p90: number
  readonly p99: number
  readonly p999: number
  readonly max: number
  readonly mean: number
}

export interface VerifyResult {
  /** Messages found in history across all chats. */
  readonly persisted: number
  /** Acked messages that history does not hold. */
  readonly missing: number
  /** clientMsgIds found more than once. */
  readonly duplicates: number
  /** Chats whose seqs are not exactly 1..n. */
  readonly gapChats: number
  readonly ok: boolean
}

export interface ScenarioResult {
  readonly scenario: ScenarioName
  /** The offered rate (sends/s) for the fixed-rate scenario; null when pushing as fast as acks come. */
  readonly offeredRate: number | null
  /** Length of the measured window (seconds). */
  readonly seconds: number
  readonly sent: number
  readonly acked: number
  readonly sendErrors: number
  /** Sends still un-acked after the drain. */
  readonly unacked: number
  /** Accepted (acked) msgs/s in the measured window. */
  readonly acceptedPerSecond: number
  /** Lowest acked count in any whole second of the window (how sustained it was). */
  readonly minAcceptedPerSecond: number
  /** Deliveries/s in the measured window. */
  readonly deliveriesPerSecond: number
  readonly delivered: number
  /** Deliveries that should have arrived (acked × open subscribers) but had not when the scenario ended (after the drain and the wait for persistence). */
  readonly missingDeliveries: number
  /** Deliveries that arrived out of seq order or twice. */
  readonly disorderedDeliveries: number
  /** send → deliver, milliseconds, over the measured window. */
  readonly latency: LatencySummary
  /** send → ack, milliseconds. */
  readonly ackLatency: LatencySummary
  /** Harmony: acked msgs/s counted until everything acked was persisted (null for baselines). */
  readonly persistedPerSecond: number | null
  /** Harmony: seconds from the end of sending until everything acked was persisted. */
  readonly persistLagSeconds: number | null
  /** WebSocket close codes seen during the scenario (4008 = too slow). */
  readonly closes: Readonly<Record<string, number>>
  /** How far the fixed-rate scheduler fell behind at worst (ms): a loaded generator shows here. */
  readonly schedulerLagMaxMs: number
  /** CPU seconds per process group during the scenario, and the whole machine's busy share. */
  readonly cpu: CpuUsage
  /** CLOCK_MONOTONIC (µs) at the start and end of sending: the window to cut a server CPU profile to. */
  readonly monotonicUs: readonly [number, number]
  /** Harmony: each stage of the message path over the measured window (bench/stages.ts). */
  readonly stages?: ReadonlyArray<StageSummary> | undefined
}

/** CLOCK_MONOTONIC in microseconds (the clock V8's CPU profiles use on Linux). */
export const monotonicUs = () => Number(process.hrtime.bigint() / 1000n)

export interface CpuUsage {
  readonly seconds: number
  /** Process name → CPU seconds used during the scenario. */
  readonly processes: Readonly<Record<string, number>>
  /** CPU seconds the whole machine spent busy (all cores) during the scenario. */
  readonly machineBusy: number
  readonly cores: number
}

export interface TargetResult {
  readonly label: string
  readonly target: TargetKind
  readonly setupSeconds: number
  readonly connections: number
  readonly scenarios: ReadonlyArray<ScenarioResult>
  /** Harmony: history checked after all scenarios. */
  readonly verify: VerifyResult | null
  readonly notes: ReadonlyArray<string>
}

/** What the load generator sends its parent over IPC. */
export type LoadEvent =
  | { readonly type: "log"; readonly text: string }
  | {
      readonly type: "progress"
      readonly label: string
      readonly phase: string
      readonly elapsed: number
      readonly sent: number
      readonly acked: number
      readonly delivered: number
      readonly persisted: number | null
      readonly p99: number | null
      readonly errors: number
      readonly closed: number
    }
  | { readonly type: "result"; readonly result: TargetResult }
  | { readonly type: "failed"; readonly message: string }

export const sleep = (ms: number) => new Promise<void>((resolve) => setTimeout(resolve, ms))

/** A port nobody listens on right now. */
/** A port nothing listens on now (the test harness's own helper). */
export { freePort } from "../test/support/harmony.ts"

/** How a Harmony target exports OTLP (`--otel`): not at all, to a collector that is down, to a sink that accepts. */
export type OtelVariant = "off" | "down" | "up"

/** The label suffix of a Harmony target of an OTLP variant ("" without OTLP). */
export const otelSuffix = (variant: OtelVariant): string => (variant === "off" ? "" : `+otel-${variant}`)

/**
 * Latency histogram with logarithmic buckets (1% wide, 1 µs to ~10 min):
 * bounded memory whatever the sample count, percentiles within 1%.
 */
export class Histogram {
  private static readonly min = 0.001
  private static readonly growth = Math.log(1.01)
  private readonly buckets = new Float64Array(2100)
  count = 0
  private sum = 0
  private maxValue = 0

  record(ms: number) {
    const value = Math.max(ms, Histogram.min)
    let index = Math.floor(Math.log(value / Histogram.min) / Histogram.growth)
    if (index >= this.buckets.length) index = this.buckets.length - 1
    this.buckets[index]!++
    this.count++
    this.sum += ms
    if (ms > this.maxValue) this.maxValue = ms
  }

  percentile(p: number): number {
    if (this.count === 0) return Number.NaN
    const rank = Math.ceil((p / 100) * this.count)
    let seen = 0
    for (let i = 0; i < this.buckets.length; i++) {
      seen += this.buckets[i]!
      // The bucket's upper edge, capped by the largest sample.
      if (seen >= rank) return Math.min(Histogram.min * Math.exp((i + 1) * Histogram.growth), this.maxValue)
    }
    return this.maxValue
  }

  reset() {
    this.buckets.fill(0)
    this.count = 0
    this.sum = 0
    this.maxValue = 0
  }

  summary(): LatencySummary {
    return {
      count: this.count,
      p50: this.percentile(50),
      p90: this.percentile(90),
      p99: this.percentile(99),
      p999: this.percentile(99.9),
      max: this.count === 0 ? Number.NaN : this.maxValue,
      mean: this.count === 0 ? Number.NaN : this.sum / this.count
    }
  }
}
