/**
 * The hand-over of a partition between members. A member assigned a
 * partition reads the group description and, if another member listed the
 * partition, waits until that member's release marker appears in the
 * partition's committed-offset metadata (or a deadline passes: a holder that
 * hangs, or died without leaving the group). A revoked claim, once its
 * handler has drained and committed, commits the final offset once more
 * with the marker: its last write to the partition.
 */
import { Duration, Effect, Schedule } from "effect"
import type { Admin } from "kafkajs"
import type { Holdings } from "./Assignment.ts"
import { attempt } from "./errors.ts"

const releasePrefix = "harmony:released:"

/** The committed-offset metadata that says the claim `id` has released its partition. */
export const releaseMarker = (id: string) => `${releasePrefix}${id}`

export const make = (options: {
  readonly admin: Admin
  readonly group: string
  readonly topic: string
  /** The consumer, for messages. */
  readonly describe: string
  readonly holdingsOf: (metadata: Buffer) => Holdings | undefined
  readonly handoverTimeout: Duration.Duration
}) => {
  const { admin, group, topic, describe, holdingsOf, handoverTimeout } = options
  /** Polls the group's committed offset of the partition. */
  const committed = (partition: number) =>
    attempt(`reading the committed offsets of ${describe}`, () =>
      admin.fetchOffsets({ groupId: group, topics: [topic] })
    ).pipe(
      Effect.map((answer) => {
        const entry = answer.find((t) => t.topic === topic)?.partitions.find((p) => p.partition === partition)
        return { offset: Number(entry?.offset ?? -1), metadata: entry?.metadata ?? null }
      })
    )

  /** Where a claim starts: the committed offset, or the partition's earliest when there is none. */
  const startingOffset = (partition: number) =>
    Effect.gen(function* () {
      const { offset } = yield* committed(partition)
      if (offset >= 0) return offset
      const offsets = yield* attempt(`reading the offsets of ${topic}`, () => admin.fetchTopicOffsets(topic))
      return Number(offsets.find((o) => o.partition === partition)?.low ?? 0)
    })

  /** Claim ids other members announced for the partition when they last joined. */
  const holders = (partition: number) =>
    attempt(`describing ${describe}`, () => admin.describeGroups([group])).pipe(
      Effect.map(({ groups }) => {
        const description = groups.find((g) => g.groupId === group)
        // Members' metadata is only described in a stable group.
        if (description?.state !== "Stable") return undefined
        return description.members.flatMap((member) => {
          const held = holdingsOf(member.memberMetadata)
          if (held?.topic !== topic) return []
          return held.held.filter((h) => h.partition === partition).map((h) => h.id)
        })
      })
    )

  /**
   * Waits until every member that announced the partition has released it
   * (claim `self` is this member's own), or the hand-over deadline passes
   * (a holder that hangs or died without leaving the group). Polls every
   * 100 ms; a failed poll is logged and tried again.
   */
  const awaitRelease = (partition: number, self: string) =>
    Effect.gen(function* () {
      let waitingFor: ReadonlyArray<string> | undefined
      const released = new Set<string>()
      const step = Effect.gen(function* () {
        if (waitingFor === undefined) {
          waitingFor = yield* holders(partition)
          if (waitingFor !== undefined && waitingFor.length > 0) {
            yield* Effect.logDebug(`partition ${partition}: waiting for ${waitingFor.join(", ")} to release it`)
          }
        }
        if (waitingFor === undefined) return false
        if (waitingFor.every((id) => id === self || released.has(id))) return true
        const { metadata } = yield* committed(partition)
        if (metadata?.startsWith(releasePrefix)) released.add(metadata.slice(releasePrefix.length))
        return waitingFor.every((id) => id === self || released.has(id))
      }).pipe(
        Effect.catch((error) =>
          Effect.logWarning(`waiting for partition ${partition}: ${error.message}`).pipe(Effect.as(false))
        )
      )
      const done = yield* step.pipe(
        Effect.repeat({ schedule: Schedule.spaced("100 millis"), until: (done) => done }),
        Effect.timeoutOption(handoverTimeout)
      )
      if (done._tag === "None") {
        yield* Effect.logWarning(
          `partition ${partition} was not released by its previous holder within ${Duration.format(handoverTimeout)}; taking it over from the committed offset`
        )
      }
    }).pipe(Effect.annotateLogs({ group, topic, partition }))

  return { committed, startingOffset, awaitRelease }
}
