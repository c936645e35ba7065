/**
 * The SDK's HTTP calls, derived from the server's own `HttpApi` definition
 * (src/http/Api.ts) with `HttpApiClient`: the routes, request encodings and
 * answer schemas are the server's, not written again here.
 *
 * Three things are the SDK's own, wrapped around the derived client:
 * - the transport is `fetch` (the app's, or `globalThis.fetch`) and sends no
 *   trace headers, so a page on another origin needs no extra CORS allowance;
 * - requests are not checked before they leave: the server judges them and
 *   answers `bad_request` with its status, one rule in one place;
 * - every non-2xx answer becomes a `HarmonyError` with the contract's code,
 *   the HTTP status and `Retry-After`, whatever the endpoint declares; and a
 *   failure to get an answer at all is `network`.
 * The bearer token of a call is the `CallToken` it runs with; the client side
 * of the `Authentication` middleware sends it on the endpoints that declare it.
 */
import { Context, Effect, Option, Schema } from "effect"
import { FetchHttpClient, HttpClient, HttpClientError, HttpClientRequest, type HttpClientResponse } from "effect/http"
import { HttpApi, HttpApiClient, HttpApiMiddleware } from "effect/http-api"
import { Api, Authentication } from "../http/Api.ts"
import { ErrorBody } from "../schema/Errors.ts"
import { fromWire, HarmonyError } from "./HarmonyError.ts"

/** The access token the call in progress authenticates with (none: an anonymous call). */
export const CallToken = Context.Reference<string | undefined>("harmony/client/CallToken", {
  defaultValue: () => undefined
})

/** The contract as the SDK sends it: the same routes and schemas, with request checks left to the server. */
const ClientApi = Api.annotate(HttpApi.ParamsParseOptions, { disableChecks: true })
  .annotate(HttpApi.QueryParseOptions, { disableChecks: true })
  .annotate(HttpApi.PayloadParseOptions, { disableChecks: true })

const bearer = HttpApiMiddleware.layerClient(Authentication, ({ request, next }) =>
  Effect.gen(function* () {
    const token = yield* CallToken
    return yield* next(token === undefined ? request : HttpClientRequest.bearerToken(request, token))
  })
)

const decodeErrorBody = Schema.decodeUnknownOption(Schema.fromJsonString(ErrorBody))

/** A 2xx answer as is; any other as the contract's error (an answer without one: `unavailable` on 503, else `internal`). */
const contractAnswer = (
  response: HttpClientResponse.HttpClientResponse
): Effect.Effect<HttpClientResponse.HttpClientResponse, HarmonyError> => {
  if (response.status >= 200 && response.status < 300) return Effect.succeed(response)
  const what = `${response.request.method} ${response.request.url}`
  return response.text.pipe(
    Effect.mapError(() => new HarmonyError({ code: "network", message: `${what}: the answer broke off` })),
    Effect.flatMap((text) => {
      const wire = decodeErrorBody(text)
      const retryAfter = Number(response.headers["retry-after"])
      return Effect.fail(
        Option.isSome(wire)
          ? fromWire(
              wire.value.error.code,
              wire.value.error.message,
              response.status,
              retryAfter > 0 ? retryAfter : undefined
            )
          : new HarmonyError({
              code: response.status === 503 ? "unavailable" : "internal",
              message: `${what} answered ${response.status}`,
              status: response.status
            })
      )
    })
  )
}

/** Whatever else a derived call can fail with, as a `HarmonyError`. */
const asHarmonyError = (error: unknown): HarmonyError => {
  if (error instanceof HarmonyError) return error
  if (HttpClientError.isHttpClientError(error)) {
    // No answer (fetch failed), or the answer's body broke off (a DecodeError with a cause; without
    // one it is an answer off the contract, such as a status the endpoint does not declare).
    const { reason } = error
    const network = reason._tag === "TransportError" || (reason._tag === "DecodeError" && reason.cause !== undefined)
    return new HarmonyError({ code: network ? "network" : "internal", message: error.message })
  }
  if (Schema.isSchemaError(error)) {
    return new HarmonyError({ code: "internal", message: `an answer off the contract: ${error.message}` })
  }
  return new HarmonyError({ code: "internal", message: String(error) })
}

const makeApiClient = (fetchImpl: typeof fetch, baseUrl: string) =>
  Effect.gen(function* () {
    const httpClient = (yield* HttpClient.HttpClient).pipe(
      HttpClient.transform((effect) =>
        effect.pipe(
          Effect.provideService(FetchHttpClient.Fetch, fetchImpl),
          Effect.provideService(HttpClient.TracerPropagationEnabled, false)
        )
      ),
      HttpClient.transformResponse(Effect.flatMap(contractAnswer))
    )
    return yield* HttpApiClient.makeWith(ClientApi, { httpClient, baseUrl })
  }).pipe(Effect.provide([FetchHttpClient.layer, bearer]), Effect.runSync)

/** The derived client: `api.<group>.<endpoint>(request)`, as in src/http/Api.ts. */
export type ApiClient = ReturnType<typeof makeApiClient>

export interface Http {
  readonly api: ApiClient
  /** Runs a call of `api`, with `token` as its bearer if given; it fails with `HarmonyError` only. */
  readonly call: <A>(call: Effect.Effect<A, unknown>, token?: string) => Effect.Effect<A, HarmonyError>
}

export const makeHttp = (fetchImpl: typeof fetch, baseUrl: string): Http => ({
  api: makeApiClient(fetchImpl, baseUrl),
  call: (call, token) =>
    call.pipe(
      Effect.mapError(asHarmonyError),
      token === undefined ? (effect) => effect : Effect.provideService(CallToken, token)
    )
})
