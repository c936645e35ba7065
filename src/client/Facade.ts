/**
 * The client's Promise/callback face: each call of `HarmonyClientEffect` run
 * as a Promise that rejects with its `HarmonyError`, plus `on` and `typing`.
 */
import { Effect } from "effect"
import type { Session } from "../schema/Domain.ts"
import type { Events } from "./Events.ts"
import type { HarmonyError } from "./HarmonyError.ts"
import type { HarmonyClient, HarmonyClientEffect } from "./Types.ts"

/** The same calls as Promises. */
export const promiseFacade = (
  effect: HarmonyClientEffect,
  parts: {
    readonly auth: { readonly session: () => Session | undefined }
    readonly events: Events
    readonly typing: (chatId: string) => void
  }
): HarmonyClient => {
  const run = <A>(program: Effect.Effect<A, HarmonyError>): Promise<A> => Effect.runPromise(program)
  return {
    get user() {
      return parts.auth.session()?.user
    },
    get status() {
      return parts.events.status()
    },
    effect,
    register: (input) => run(effect.register(input)),
    login: (input) => run(effect.login(input)),
    resume: (session) => run(effect.resume(session)),
    logout: () => run(effect.logout()),
    me: () => run(effect.me()),
    chats: () => run(effect.chats()),
    searchUsers: (prefix) => run(effect.searchUsers(prefix)),
    getUser: (userId) => run(effect.getUser(userId)),
    createChat: (input) => run(effect.createChat(input)),
    chat: (chatId) => run(effect.chat(chatId)),
    renameChat: (chatId, name) => run(effect.renameChat(chatId, name)),
    deleteChat: (chatId) => run(effect.deleteChat(chatId)),
    addMembers: (chatId, userIds) => run(effect.addMembers(chatId, userIds)),
    removeMember: (chatId, userId) => run(effect.removeMember(chatId, userId)),
    setRole: (chatId, userId, role) => run(effect.setRole(chatId, userId, role)),
    history: (chatId, page) => run(effect.history(chatId, page)),
    search: (query) => run(effect.search(query)),
    markRead: (chatId, seq) => run(effect.markRead(chatId, seq)),
    readPositions: (chatId) => run(effect.readPositions(chatId)),
    editMessage: (chatId, seq, body, options) => run(effect.editMessage(chatId, seq, body, options)),
    deleteMessage: (chatId, seq, options) => run(effect.deleteMessage(chatId, seq, options)),
    react: (chatId, seq, emoji, options) => run(effect.react(chatId, seq, emoji, options)),
    unreact: (chatId, seq, emoji, options) => run(effect.unreact(chatId, seq, emoji, options)),
    connect: () => run(effect.connect()),
    subscribe: (chatId, subscribeOptions) => run(effect.subscribe(chatId, subscribeOptions)),
    unsubscribe: (chatId) => run(effect.unsubscribe(chatId)),
    send: (chatId, body, sendOptions) => run(effect.send(chatId, body, sendOptions)),
    typing: parts.typing,
    on: parts.events.on,
    close: () => run(effect.close())
  }
}
