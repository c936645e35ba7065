/**
 * What the embedded log's durable group commit costs the event loop at a
 * steady send rate: produces one record at a time at RATE/s (as the latency
 * scenario sends) for SECONDS, into 8 partitions, and prints the event loop's
 * utilisation, the process's CPU (every thread) and the loop's delay. An
 * fsync on the event loop shows as a loop busy far beyond its CPU.
 *
 *   RATE=1000 SECONDS=5 npx tsx bench/log-loop.ts
 */
import { mkdtempSync } from "node:fs"
import { tmpdir } from "node:os"
import { join } from "node:path"
import { monitorEventLoopDelay, performance } from "node:perf_hooks"
import { Context, Effect, Layer } from "effect"
import * as SqliteEventLog from "../src/adapters/sqlite/SqliteEventLog.ts"
import { EventLog } from "../src/ports/EventLog.ts"

const rate = Number(process.env.RATE ?? 1000)
const seconds = Number(process.env.SECONDS ?? 5)
const dir = mkdtempSync(join(tmpdir(), "fsync-block-"))
await Effect.runPromise(
  Effect.scoped(
    Effect.gen(function* () {
      const log = Context.get(yield* Layer.build(SqliteEventLog.layer({ directory: dir, partitions: 8 })), EventLog)
      yield* log.createTopic("t", 8)
      const h = monitorEventLoopDelay({ resolution: 1 })
      h.enable()
      const elu0 = performance.eventLoopUtilization()
      const cpu0 = process.cpuUsage()
      const started = performance.now()
      const pending: Array<Promise<unknown>> = []
      let sent = 0
      while (performance.now() - started < seconds * 1000) {
        const due = Math.floor(((performance.now() - started) / 1000) * rate)
        while (sent < due) {
          pending.push(Effect.runPromise(log.produce("t", [{ key: `chat-${sent % 100}`, value: "x".repeat(300) }])))
          sent++
        }
        yield* Effect.promise(() => new Promise((r) => setTimeout(r, 1)))
      }
      yield* Effect.promise(() => Promise.all(pending))
      const elu = performance.eventLoopUtilization(elu0)
      const cpu = process.cpuUsage(cpu0)
      h.disable()
      console.log(
        `rate ${rate}/s, ${sent} sends: loop busy ${(elu.utilization * 100).toFixed(0)}% of wall, CPU ${((cpu.user + cpu.system) / 1000 / (performance.now() - started)).toFixed(2)} core; loop delay p50 ${(h.percentile(50) / 1e6).toFixed(1)} ms p99 ${(h.percentile(99) / 1e6).toFixed(1)} ms max ${(h.max / 1e6).toFixed(1)} ms`
      )
    })
  )
)
