"""Every Redis key name of ours, in one place. Other programs read this layout (README, *Redis layout*).

Prefix `otb` (`OTB_KEY_PREFIX`). A batch's keys expire together, `OTB_RESULT_TTL` after its submit;
the indexes drop a batch as it ends. RQ's own keys (`rq:*`: queue, jobs, registries) are not named
here: they are reached through RQ's API (`Queue`, `Job`, the registries), never written by hand.

    {p}:batch:{id}               HASH    the batch record: status, counts, cost/spend, held_pico, tokens, options
    {p}:batch:{id}:ids           LIST    custom_ids in input order
    {p}:batch:{id}:requests      HASH    custom_id -> {"url", "body", "line"} as submitted
    {p}:batch:{id}:results       HASH    custom_id -> result line
    {p}:batch:{id}:events        STREAM  one entry per finished request, then the batch's end
    {p}:batch:{id}:jobs          SET     ids of the RQ chunk jobs that carry its requests
    {p}:batch:{id}:agg           HASH    the batch's aggregates by hour (`otb report --batch / --by batch`)
    {p}:batch:{id}:reserved      HASH    budget holds of calls in flight (--max-cost)
    {p}:batch:{id}:answers       SET     extra provider answers already counted in `spent_pico`
    {p}:batches                  ZSET    batch ids by creation time (Redis TIME), pruned as batches expire
    {p}:open                     ZSET    batches not finished yet (the janitor's rounds)
    {p}:deadlines                ZSET    batch ids by the end of their completion window
    {p}:events                   STREAM  every batch's end (capped)
    {p}:idempotency:{sha256}     STRING  the batch an idempotency key created
    {p}:agg:{YYYYMMDDHH}         HASH    running aggregates of one UTC hour
    {p}:agg:hours                ZSET    the aggregate hours, scored by their start
    {p}:lease:{job}              STRING  held by the process running a chunk (its value: the owner's token)
    {p}:claimed                  HASH    job id -> "{claimer's lease key} {unix s} {claimer's token}" for claimed chunks
    {p}:recovering:{job}         STRING  one janitor's lock on recovering a chunk
    {p}:recoveries:{job}         STRING  how often a chunk was recovered; expires `OTB_RESULT_TTL` after the last
    {p}:rescuing                 STRING  one janitor's lock on a round of rescues
    {p}:rescuing:{id}            STRING  one janitor's lock on rescuing a batch (a round may outlast the round lock)
    {p}:unplaced:{job}           STRING  a queued-looking chunk found in no queue, registry or claim (one round)
    {p}:parked                   ZSET    {"batch", "ids"} of requests set aside, by when they resume
    {p}:rl:{scope}               HASH    a shared rate-limit bucket (model and a hash of the API key)
    {p}:cool:{scope}             STRING  a shared cool-down of that scope
    {p}:writable                 STRING  a worker's probe: does Redis take writes again? (10 s)
    {p}:native:due               ZSET    batches with native provider batches, by when their poller looks next
    {p}:native:lease:{id}        STRING  the worker process polling that batch's provider batches now
    {p}:native:{id}              HASH    a batch's native route: how many parts (`parts`), `planned`
    {p}:native:{id}:todo         LIST    custom_ids sent to the native route (submit, retry), not in a part yet
    {p}:native:{id}:part:{n}     HASH    one provider batch: provider, model, state, intent marker, provider id
    {p}:native:{id}:ids:{n}      LIST    its custom_ids; the id sent for position i is `{marker}_{i}`
    {p}:native:{id}:extras       HASH    custom_id -> what its translation dropped or noted (only lines with any)
    {p}:native:known             SET     provider batch ids recorded by an intent (a lost create matches none)

The HTTP API (producer/api, `otb serve`): a tenant is a key prefix, and every read also checks the
owner recorded in the value. API keys are never stored, only their SHA-256. A tenant's batches and
calls name it as their pool (batch options `pool`, and `pool_max_pico` for a key with --max-cost):
every commit adds their spend to its hash, and a call holds its worst case in its `reserved` holds.

    {p}:apikey:{sha256}               STRING  the tenant a key belongs to (deleted on revoke)
    {p}:tenant:{name}                 HASH    the tenant: key_sha256, created_at, rpm, max_cost, webhook_url,
                                              webhook_secret, revoked_at, spent_pico (what its calls and batches
                                              cost, added by each commit: the pool of its batches, below),
                                              held_pico (the sum of its holds in flight, kept by the budget scripts)
    {p}:tenant:{name}:reserved        HASH    the key's --max-cost holds of calls in flight, over all its
                                              batches: "{batch id} {custom_id}" -> "{pico} {deadline} {lease}"
    {p}:tenants                       SET     tenant names (`otb keys list`)
    {p}:tenant:{name}:files           ZSET    its file ids, all score 0: the ids sort by time (cursor pages)
    {p}:tenant:{name}:file:{id}       HASH    a file's FileObject fields (+ tenant, lines)
    {p}:tenant:{name}:file:{id}:data  LIST    the file's bytes, in chunks of about 1 MiB
    {p}:rl:tenant:{name}              HASH    the key's shared request bucket (`otb keys create --rpm`)
    {p}:tenant:{name}:batches         ZSET    its Batch API ids, all score 0: the ids sort by time (cursor pages)
    {p}:tenant:{name}:batch:{id}      HASH    a Batch API record: its parameters, phase, errors, output files
                                              and final figures (the engine's own batch is {p}:batch:{id})
    {p}:tenant:{name}:batch:{id}:lock STRING  the server creating or finalizing that batch (a lease)
    {p}:tenant:{name}:batch-key:{sha} STRING  an Idempotency-Key's batch id and the digest of its parameters
    {p}:api:open                      HASH    batch id -> tenant, for Batch API batches not final yet (or
                                              final, their on_final hooks not run yet)
    {p}:webhook:{event id}            HASH    a batch event for a tenant's webhook: body, state, attempts
    {p}:webhook:once:{batch}:{status} STRING  the event announced for that batch's end (announced once)
    {p}:webhooks:due                  ZSET    event ids by their next delivery attempt (unix s)
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Keys:
    """Key names under one prefix. Pure: builds strings, never talks to Redis."""

    prefix: str = "otb"

    # -- a batch's own keys: written with one lifetime, they expire together ---------------------
    def batch(self, bid: str) -> str:
        return f"{self.prefix}:batch:{bid}"

    def ids(self, bid: str) -> str:
        return f"{self.batch(bid)}:ids"

    def requests(self, bid: str) -> str:
        return f"{self.batch(bid)}:requests"

    def results(self, bid: str) -> str:
        return f"{self.batch(bid)}:results"

    def events(self, bid: str) -> str:
        return f"{self.batch(bid)}:events"

    def jobs(self, bid: str) -> str:
        return f"{self.batch(bid)}:jobs"

    def batch_agg(self, bid: str) -> str:
        return f"{self.batch(bid)}:agg"

    def reservations(self, bid: str) -> str:
        return f"{self.batch(bid)}:reserved"

    def answers(self, bid: str) -> str:
        return f"{self.batch(bid)}:answers"

    def of_batch(self, bid: str) -> list[str]:
        """Every key a batch owns: they are written with one lifetime and expire together."""
        return [self.batch(bid), self.ids(bid), self.requests(bid), self.results(bid), self.jobs(bid),
                self.events(bid), self.batch_agg(bid), self.reservations(bid), self.answers(bid)]

    # -- indexes over batches -------------------------------------------------------------------
    @property
    def batches(self) -> str:
        return f"{self.prefix}:batches"

    @property
    def open(self) -> str:
        return f"{self.prefix}:open"

    @property
    def deadlines(self) -> str:
        return f"{self.prefix}:deadlines"

    @property
    def all_events(self) -> str:
        return f"{self.prefix}:events"

    def idempotency(self, digest: str) -> str:
        return f"{self.prefix}:idempotency:{digest}"

    # -- aggregates (no batch id: they outlive batches) ------------------------------------------
    def agg_hour(self, hour: str) -> str:
        return f"{self.prefix}:agg:{hour}"

    @property
    def agg_hours(self) -> str:
        return f"{self.prefix}:agg:hours"

    # -- chunk jobs beyond RQ: leases, claims, recovery, parking --------------------------------
    def lease(self, job_id: str) -> str:
        return f"{self.prefix}:lease:{job_id}"

    @property
    def claimed(self) -> str:
        return f"{self.prefix}:claimed"

    def recovering(self, job_id: str) -> str:
        return f"{self.prefix}:recovering:{job_id}"

    def recoveries(self, job_id: str) -> str:
        return f"{self.prefix}:recoveries:{job_id}"

    @property
    def rescuing(self) -> str:
        return f"{self.prefix}:rescuing"

    def rescuing_batch(self, bid: str) -> str:
        return f"{self.prefix}:rescuing:{bid}"

    def unplaced(self, job_id: str) -> str:
        return f"{self.prefix}:unplaced:{job_id}"

    @property
    def parked(self) -> str:
        return f"{self.prefix}:parked"

    # -- shared rate limits ----------------------------------------------------------------------
    def bucket(self, scope: str) -> str:
        return f"{self.prefix}:rl:{scope}"

    def cooldown(self, scope: str) -> str:
        return f"{self.prefix}:cool:{scope}"

    # -- worker health -------------------------------------------------------------------------
    @property
    def writable(self) -> str:
        return f"{self.prefix}:writable"

    # -- native provider batches (worker/native) ---------------------------------------------------
    @property
    def native_due(self) -> str:
        return f"{self.prefix}:native:due"

    def native_lease(self, bid: str) -> str:
        return f"{self.prefix}:native:lease:{bid}"

    def native(self, bid: str) -> str:
        return f"{self.prefix}:native:{bid}"

    def native_todo(self, bid: str) -> str:
        return f"{self.native(bid)}:todo"

    def native_part(self, bid: str, n: int) -> str:
        return f"{self.native(bid)}:part:{n}"

    def native_ids(self, bid: str, n: int) -> str:
        return f"{self.native(bid)}:ids:{n}"

    def native_extras(self, bid: str) -> str:
        return f"{self.native(bid)}:extras"

    @property
    def native_known(self) -> str:
        return f"{self.prefix}:native:known"

    # -- the HTTP API: keys, tenants and their files (producer/api) ---------------------------
    def api_key(self, digest: str) -> str:
        return f"{self.prefix}:apikey:{digest}"

    def tenant(self, name: str) -> str:
        return f"{self.prefix}:tenant:{name}"

    @property
    def tenants(self) -> str:
        return f"{self.prefix}:tenants"

    def tenant_reserved(self, name: str) -> str:
        """The holds of a tenant's budget pool (worker/budget.py): the calls in flight of all its batches."""
        return f"{self.tenant(name)}:reserved"

    def files(self, tenant: str) -> str:
        return f"{self.tenant(tenant)}:files"

    def file(self, tenant: str, file_id: str) -> str:
        return f"{self.tenant(tenant)}:file:{file_id}"

    def file_data(self, tenant: str, file_id: str) -> str:
        return f"{self.file(tenant, file_id)}:data"

    # -- the Batch API's records over the engine's batches (producer/api/batchrecords.py) ---------
    def api_batches(self, tenant: str) -> str:
        return f"{self.tenant(tenant)}:batches"

    def api_batch(self, tenant: str, bid: str) -> str:
        return f"{self.tenant(tenant)}:batch:{bid}"

    def api_batch_lock(self, tenant: str, bid: str) -> str:
        return f"{self.api_batch(tenant, bid)}:lock"

    def api_batch_key(self, tenant: str, digest: str) -> str:
        return f"{self.tenant(tenant)}:batch-key:{digest}"

    @property
    def api_open(self) -> str:
        return f"{self.prefix}:api:open"
    # -- the HTTP API: webhook events and their deliveries (producer/api/webhooks.py) ------------
    def webhook(self, event_id: str) -> str:
        return f"{self.prefix}:webhook:{event_id}"

    def webhook_once(self, batch_id: str, status: str) -> str:
        return f"{self.prefix}:webhook:once:{batch_id}:{status}"

    @property
    def webhooks_due(self) -> str:
        return f"{self.prefix}:webhooks:due"
