/**
 * Membership lookups for the hot paths (every send, subscribe, typing), with
 * the cache in front of Postgres: cache-aside, negative answers too, the TTL
 * only as a backstop — the cache invalidator writes the fresh answer when a
 * membership changes. Readers fill with set-if-absent, so an answer read
 * before a change cannot overwrite the one written after it. When the cache
 * is down, lookups go to Postgres: degraded, never wrong — and without
 * waiting for it: the cache calls go through a breaker (CacheBreaker.ts).
 */
import { Context, Duration, Effect, Layer, Metric, Option } from "effect"
import { Cache, type CacheError } from "../ports/Cache.ts"
import { cacheLookups } from "../Metrics.ts"
import type { ChatId, Role, UserId } from "../schema/Domain.ts"
import type { Unavailable } from "../schema/Errors.ts"
import * as CacheBreaker from "./CacheBreaker.ts"
import { Chats } from "./Chats.ts"
import { ExportGate, spanWhenExported } from "../Tracing.ts"

export const roleKey = (chatId: string, userId: string) => `harmony:role:${chatId}:${userId}`
const NotMember = "-"
export const MembershipTtl = Duration.minutes(10)

const encode = (role: Option.Option<Role>) => (role._tag === "Some" ? role.value : NotMember)
const decode = (value: string): Option.Option<Role> | undefined =>
  value === NotMember
    ? Option.none()
    : value === "owner" || value === "admin" || value === "member"
      ? Option.some(value)
      : undefined

export class Membership extends Context.Service<
  Membership,
  {
    readonly roleOf: (chatId: ChatId, userId: UserId) => Effect.Effect<Option.Option<Role>, Unavailable>
    /** Writes the current answer from Postgres into the cache (the invalidator's job; it retries failures). */
    readonly refresh: (chatId: ChatId, userId: UserId) => Effect.Effect<void, Unavailable | CacheError>
    /**
     * After a membership change commits, the node that made it writes the
     * fresh answers into the cache at once, so the change holds from its
     * response on; the cache invalidator does the same from the event for
     * everyone else. A cache that cannot be written here is left to it.
     */
    readonly changed: (chatId: ChatId, userIds: ReadonlyArray<UserId>) => Effect.Effect<void>
  }
>()("harmony/state/Membership") {
  static readonly layer = Layer.effect(
    Membership,
    Effect.gen(function* () {
      const cache = yield* Cache
      const chats = yield* Chats
      const breaker = CacheBreaker.make({ what: "membership lookups", inProcess: cache.inProcess })

      const gate = yield* ExportGate
      const lookups = {
        hit: Metric.withAttributes(cacheLookups, { result: "hit" }),
        miss: Metric.withAttributes(cacheLookups, { result: "miss" }),
        error: Metric.withAttributes(cacheLookups, { result: "error" })
      }
      const roleOf = Effect.fnUntraced(
        function* (chatId: ChatId, userId: UserId) {
          const key = roleKey(chatId, userId)
          const cached = yield* breaker.run(cache.get(key)).pipe(
            Effect.map((value) => (value === undefined ? undefined : decode(value))),
            Effect.catchTag("CacheError", (error) =>
              breaker
                .warn("reading Postgres", error)
                .pipe(Effect.andThen(Metric.update(lookups.error, 1)), Effect.as(undefined))
            )
          )
          if (cached !== undefined) {
            yield* Metric.update(lookups.hit, 1)
            return cached
          }
          yield* Metric.update(lookups.miss, 1)
          const role = yield* chats.roleOf(chatId, userId)
          yield* breaker
            .run(cache.setIfAbsent(key, encode(role), MembershipTtl))
            .pipe(Effect.catchTag("CacheError", (error) => Effect.logDebug("membership not cached", error)))
          return role
        },
        spanWhenExported(gate, "Membership.roleOf")
      )

      const refresh = Effect.fn("Membership.refresh")(function* (chatId: ChatId, userId: UserId) {
        const role = yield* chats.roleOf(chatId, userId)
        yield* cache.set(roleKey(chatId, userId), encode(role), MembershipTtl)
      })

      const changed = (chatId: ChatId, userIds: ReadonlyArray<UserId>) =>
        Effect.forEach(
          userIds,
          (userId) =>
            refresh(chatId, userId).pipe(
              Effect.catchCause((cause) => Effect.logWarning("membership cache not refreshed", cause))
            ),
          { discard: true, concurrency: 8 }
        )

      return Membership.of({ roleOf, refresh, changed })
    })
  )
}
