/**
 * The PubSub port: cross-node broadcast by channel (fanout of sequenced
 * messages, membership signals). Redis pub/sub in cluster mode, in-process in
 * embedded mode (Redis.ts, Memory.ts). Both pass test/contract/Cache.contract.ts.
 * Delivery is at most once per live subscriber; durability is Kafka's job.
 */
import { Context } from "effect"
import type { Effect, Scope, Stream } from "effect"
import type { CacheError } from "./Cache.ts"

export class PubSub extends Context.Service<
  PubSub,
  {
    readonly publish: (channel: string, payload: string) => Effect.Effect<void, CacheError>
    /**
     * Subscribes for the lifetime of the scope; answers once the subscription
     * is active, so nothing published after it returns is missed. A node
     * holds one underlying subscription per channel however many local
     * subscribers it has (ref-counted).
     */
    readonly subscribe: (channel: string) => Effect.Effect<Stream.Stream<string>, CacheError, Scope.Scope>
  }
>()("harmony/ports/PubSub") {}
