/**
 * The behaviour every Presence adapter promises (src/ports/Presence.ts). Each
 * adapter's suite calls `presenceContract` with its layer. The tests run on
 * the live clock, since Redis expires heartbeats by its own TIME, and each
 * uses chat ids of its own, so suites can share one Redis with earlier runs.
 * Expiry is awaited by polling with a deadline, never by sleeping as an
 * assertion.
 */
import { assert, describe, layer } from "@effect/vitest"
import { Duration, Effect, Result } from "effect"
import type { Layer } from "effect"
import { CacheError } from "../../src/ports/Cache.ts"
import { Presence } from "../../src/ports/Presence.ts"
import { uniqueName } from "../support/services.ts"

const ttl = Duration.seconds(30)

const sorted = (values: ReadonlyArray<string>): Array<string> => [...values].sort()

/** Polls `online(chatId)` until `condition` holds; fails the test past the deadline. */
const awaitOnline = (chatId: string, what: string, condition: (users: ReadonlyArray<string>) => boolean) =>
  Effect.gen(function* () {
    const presence = yield* Presence
    const start = Date.now()
    const deadlineMs = 10_000
    while (true) {
      const users = yield* presence.online(chatId)
      if (condition(users)) return Date.now() - start
      if (Date.now() - start > deadlineMs) {
        return yield* Effect.die(new Error(`timed out after ${deadlineMs} ms waiting for ${what}; online: ${users}`))
      }
      yield* Effect.sleep(Duration.millis(25))
    }
  })

export const presenceContract = (name: string, adapter: Layer.Layer<Presence, CacheError>): void => {
  layer(adapter, { excludeTestServices: true })(`${name} Presence contract`, (it) => {
    describe("enter and leave", () => {
      it.effect("enter answers the chats the user joined, only the first time", () =>
        Effect.gen(function* () {
          const presence = yield* Presence
          const [a, b, c] = [uniqueName("chat-a"), uniqueName("chat-b"), uniqueName("chat-c")]
          const user = uniqueName("user")
          assert.deepStrictEqual(sorted(yield* presence.enter("node-1", user, [a, b], ttl)), sorted([a, b]))
          // A heartbeat: nothing new.
          assert.deepStrictEqual(yield* presence.enter("node-1", user, [a, b], ttl), [])
          // Only the chat the user was not in yet.
          assert.deepStrictEqual(yield* presence.enter("node-1", user, [b, c, a], ttl), [c])
          for (const chat of [a, b, c]) assert.deepStrictEqual(yield* presence.online(chat), [user])
          // No chats: nothing to do.
          assert.deepStrictEqual(yield* presence.enter("node-1", user, [], ttl), [])
        })
      )

      it.effect("a chat listed twice in one enter is joined once", () =>
        Effect.gen(function* () {
          const presence = yield* Presence
          const chat = uniqueName("chat")
          const user = uniqueName("user")
          assert.deepStrictEqual(yield* presence.enter("node-1", user, [chat, chat], ttl), [chat])
          assert.deepStrictEqual(yield* presence.online(chat), [user])
        })
      )

      it.effect("a second node entering the same user does not re-join them", () =>
        Effect.gen(function* () {
          const presence = yield* Presence
          const chat = uniqueName("chat")
          const user = uniqueName("user")
          assert.deepStrictEqual(yield* presence.enter("node-1", user, [chat], ttl), [chat])
          assert.deepStrictEqual(yield* presence.enter("node-2", user, [chat], ttl), [])
          assert.deepStrictEqual(yield* presence.online(chat), [user])
        })
      )

      it.effect("leave answers false while another node still hosts the user, and true for the last one", () =>
        Effect.gen(function* () {
          const presence = yield* Presence
          const chat = uniqueName("chat")
          const user = uniqueName("user")
          yield* presence.enter("node-1", user, [chat], ttl)
          yield* presence.enter("node-2", user, [chat], ttl)
          assert.isFalse(yield* presence.leave("node-1", user, chat))
          assert.deepStrictEqual(yield* presence.online(chat), [user])
          // node-1 has left: entering there again is a heartbeat of a user still online.
          assert.deepStrictEqual(yield* presence.enter("node-1", user, [chat], ttl), [])
          assert.isFalse(yield* presence.leave("node-1", user, chat))
          assert.isTrue(yield* presence.leave("node-2", user, chat))
          assert.deepStrictEqual(yield* presence.online(chat), [])
          // Gone everywhere: entering again is a join.
          assert.deepStrictEqual(yield* presence.enter("node-2", user, [chat], ttl), [chat])
        })
      )

      it.effect("leave of a user who is not online answers true and changes nothing", () =>
        Effect.gen(function* () {
          const presence = yield* Presence
          const chat = uniqueName("chat")
          const [here, absent] = [uniqueName("user"), uniqueName("user")]
          assert.isTrue(yield* presence.leave("node-1", absent, uniqueName("chat-never-used")))
          yield* presence.enter("node-1", here, [chat], ttl)
          assert.isTrue(yield* presence.leave("node-1", absent, chat))
          // Another node's leave does not touch node-1's presence of the user.
          assert.isFalse(yield* presence.leave("node-2", here, chat))
          assert.deepStrictEqual(yield* presence.online(chat), [here])
        })
      )

      it.effect("enter rejects a TTL that is not a positive, finite duration", () =>
        Effect.gen(function* () {
          const presence = yield* Presence
          const chat = uniqueName("chat")
          const user = uniqueName("user")
          for (const bad of [0, -5, Duration.infinity]) {
            const result = yield* Effect.result(presence.enter("node-1", user, [chat], bad))
            assert.isTrue(Result.isFailure(result), `TTL ${String(bad)} was accepted`)
            if (Result.isFailure(result)) assert.instanceOf(result.failure, CacheError)
          }
          assert.deepStrictEqual(yield* presence.online(chat), [])
        })
      )
    })

    describe("online", () => {
      it.effect("lists each online user once, whichever nodes host them", () =>
        Effect.gen(function* () {
          const presence = yield* Presence
          const chat = uniqueName("chat")
          const [u1, u2, u3] = [uniqueName("u1"), uniqueName("u2"), uniqueName("u3")]
          assert.deepStrictEqual(yield* presence.online(chat), [])
          yield* presence.enter("node-1", u1, [chat], ttl)
          yield* presence.enter("node-2", u1, [chat], ttl)
          yield* presence.enter("node-3", u1, [chat], ttl)
          yield* presence.enter("node-2", u2, [chat], ttl)
          yield* presence.enter("node-3", u3, [chat], ttl)
          assert.deepStrictEqual(sorted(yield* presence.online(chat)), sorted([u1, u2, u3]))
          yield* presence.leave("node-3", u3, chat)
          assert.deepStrictEqual(sorted(yield* presence.online(chat)), sorted([u1, u2]))
        })
      )

      it.effect("chats are isolated", () =>
        Effect.gen(function* () {
          const presence = yield* Presence
          const [red, blue] = [uniqueName("red"), uniqueName("blue")]
          const [u1, u2] = [uniqueName("u1"), uniqueName("u2")]
          assert.deepStrictEqual(yield* presence.enter("node-1", u1, [red], ttl), [red])
          assert.deepStrictEqual(yield* presence.online(blue), [])
          // In red already, but not in blue: joins blue only.
          assert.deepStrictEqual(yield* presence.enter("node-1", u1, [red, blue], ttl), [blue])
          assert.deepStrictEqual(yield* presence.enter("node-1", u2, [blue], ttl), [blue])
          assert.isTrue(yield* presence.leave("node-1", u1, blue))
          assert.deepStrictEqual(yield* presence.online(red), [u1])
          assert.deepStrictEqual(yield* presence.online(blue), [u2])
          // A chat whose id extends another's is a different chat.
          assert.deepStrictEqual(yield* presence.online(`${red}-suffix`), [])
        })
      )

      it.effect("ids holding separators and braces never run together", () =>
        Effect.gen(function* () {
          const presence = yield* Presence
          const base = uniqueName("chat")
          const chat = `${base}}:{x|y`
          const neighbour = `${base}}:{x`
          const user = "user"
          const lookalike = "user|node-1"
          assert.deepStrictEqual(yield* presence.enter("node-1", lookalike, [chat], ttl), [chat])
          // Not the same user as `user|node-1`, however their ids are joined to a node's.
          assert.deepStrictEqual(yield* presence.enter("node-1", user, [chat], ttl), [chat])
          assert.deepStrictEqual(yield* presence.enter("node-1|x", user, [neighbour], ttl), [neighbour])
          assert.deepStrictEqual(sorted(yield* presence.online(chat)), sorted([user, lookalike]))
          assert.deepStrictEqual(yield* presence.online(neighbour), [user])
          assert.isTrue(yield* presence.leave("node-1", lookalike, chat))
          assert.deepStrictEqual(yield* presence.online(chat), [user])
          assert.isTrue(yield* presence.leave("node-1", user, chat))
          assert.deepStrictEqual(yield* presence.online(neighbour), [user])
        })
      )
    })

    describe("expiry", () => {
      it.effect("a user expires after the TTL without any leave (a node killed outright)", () =>
        Effect.gen(function* () {
          const presence = yield* Presence
          const chat = uniqueName("chat")
          const [gone, staying] = [uniqueName("gone"), uniqueName("staying")]
          const start = Date.now()
          yield* presence.enter("node-killed", gone, [chat], "500 millis")
          yield* presence.enter("node-alive", staying, [chat], ttl)
          assert.deepStrictEqual(sorted(yield* presence.online(chat)), sorted([gone, staying]))
          yield* awaitOnline(chat, `${gone} to expire`, (users) => !users.includes(gone))
          assert.isAtLeast(Date.now() - start, 450, "expired before its TTL")
          assert.deepStrictEqual(yield* presence.online(chat), [staying])
          // Expired means gone: entering again is a join, and a leave finds nobody.
          assert.isTrue(yield* presence.leave("node-killed", gone, chat))
          assert.deepStrictEqual(yield* presence.enter("node-alive", gone, [chat], ttl), [chat])
        })
      )

      it.effect("one node's heartbeat expiring leaves the user online through another node", () =>
        Effect.gen(function* () {
          const presence = yield* Presence
          const chat = uniqueName("chat")
          const user = uniqueName("user")
          yield* presence.enter("node-alive", user, [chat], ttl)
          // The killed node's heartbeat is the later one to arrive, and the shorter.
          assert.deepStrictEqual(yield* presence.enter("node-killed", user, [chat], "300 millis"), [])
          yield* Effect.sleep(Duration.millis(600))
          assert.deepStrictEqual(yield* presence.online(chat), [user])
          assert.deepStrictEqual(yield* presence.enter("node-alive", user, [chat], ttl), [])
          // The killed node's entry no longer counts: the alive node's leave is the last.
          assert.isTrue(yield* presence.leave("node-alive", user, chat))
          assert.deepStrictEqual(yield* presence.online(chat), [])
        })
      )

      it.effect("heartbeats keep a user online past the first TTL", () =>
        Effect.gen(function* () {
          const presence = yield* Presence
          const chats = [uniqueName("chat-a"), uniqueName("chat-b")]
          const user = uniqueName("user")
          const heartbeatTtl = Duration.millis(600)
          const start = Date.now()
          assert.deepStrictEqual(sorted(yield* presence.enter("node-1", user, chats, heartbeatTtl)), sorted(chats))
          // Three TTLs' worth of heartbeats, each well inside the TTL.
          while (Date.now() - start < 1_800) {
            yield* Effect.sleep(Duration.millis(150))
            assert.deepStrictEqual(
              yield* presence.enter("node-1", user, chats, heartbeatTtl),
              [],
              "a heartbeat answered a join: the user had dropped out"
            )
            for (const chat of chats) assert.deepStrictEqual(yield* presence.online(chat), [user])
          }
          // Heartbeats stop: the user drops out within the TTL.
          for (const chat of chats) yield* awaitOnline(chat, `${user} to expire`, (users) => users.length === 0)
        })
      )
    })
  })
}
