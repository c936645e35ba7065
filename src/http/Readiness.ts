/**
 * What `/readyz` answers: ready only while every dependency answers and the
 * node is not draining. Each port contributes a check when its layer is built.
 */
import { Context, Duration, Effect, Layer, Ref } from "effect"

export interface Check {
  readonly name: string
  readonly run: Effect.Effect<void, unknown>
}

export class Readiness extends Context.Service<
  Readiness,
  {
    readonly draining: Ref.Ref<boolean>
    /** Runs every check (each bounded by a timeout); answers each one's outcome. */
    readonly check: Effect.Effect<{ readonly ready: boolean; readonly checks: Record<string, string> }>
  }
>()("harmony/http/Readiness") {
  static readonly layer = (checks: ReadonlyArray<Check>) =>
    Layer.effect(
      Readiness,
      Effect.gen(function* () {
        const draining = yield* Ref.make(false)
        const check = Effect.gen(function* () {
          const outcomes = yield* Effect.forEach(
            checks,
            (check) =>
              check.run.pipe(
                Effect.timeout(Duration.seconds(2)),
                Effect.as("ok"),
                Effect.catchCause((cause) =>
                  Effect.logWarning(`readiness: ${check.name} failed`, cause).pipe(Effect.as("failing"))
                ),
                Effect.map((outcome) => [check.name, outcome] as const)
              ),
            { concurrency: "unbounded" }
          )
          const result: Record<string, string> = Object.fromEntries(outcomes)
          if (yield* Ref.get(draining)) result.node = "draining"
          return { ready: Object.values(result).every((outcome) => outcome === "ok"), checks: result }
        })
        return Readiness.of({ draining, check })
      })
    )
}
