// The generations in flight, so shutdown can wait for them and cancel the rest.

export interface Tracked {
  /** The request's id (x-request-id), for the fatal log line of a process that dies with it in flight. */
  id?: string;
  /** Stops the generation; `reason` is what its client is told. */
  cancel(reason: unknown): void;
}

export class Inflight {
  private readonly active = new Set<Tracked>();
  private readonly emptied: Array<() => void> = [];
  private draining = false;

  get size(): number {
    return this.active.size;
  }

  /** The ids of the generations in flight. */
  ids(): string[] {
    return [...this.active].flatMap((entry) => (entry.id === undefined ? [] : [entry.id]));
  }

  /** True once shutdown began: new generations are refused. */
  get isDraining(): boolean {
    return this.draining;
  }

  /** Registers a generation; the returned function unregisters it (idempotent). */
  track(entry: Tracked): () => void {
    this.active.add(entry);
    return () => {
      if (!this.active.delete(entry) || this.active.size > 0) return;
      for (const resolve of this.emptied.splice(0)) resolve();
    };
  }

  /**
   * Resolves true when nothing is in flight, false when `deadline` came first (milliseconds, or
   * a promise that settles at the deadline).
   */
  idle(deadline: number | Promise<unknown>): Promise<boolean> {
    if (this.active.size === 0) return Promise.resolve(true);
    return new Promise((resolve) => {
      let timer: NodeJS.Timeout | undefined;
      const done = () => {
        clearTimeout(timer);
        resolve(true);
      };
      this.emptied.push(done);
      const expire = () => {
        const i = this.emptied.indexOf(done);
        if (i < 0) return;
        this.emptied.splice(i, 1);
        resolve(false);
      };
      if (typeof deadline === "number") timer = setTimeout(expire, deadline);
      else void deadline.then(expire, expire);
    });
  }

  /**
   * Refuses new generations, lets those in flight finish until `deadline` (milliseconds, or a
   * promise), then cancels the rest with `reason` and waits (at most `graceMs`) for them to
   * wind down.
   */
  async drain(deadline: number | Promise<unknown>, reason: unknown, graceMs = 5_000): Promise<{ cancelled: number }> {
    this.draining = true;
    if (await this.idle(deadline)) return { cancelled: 0 };
    const cancelled = this.active.size;
    for (const entry of [...this.active]) entry.cancel(reason);
    await this.idle(graceMs);
    return { cancelled };
  }
}
