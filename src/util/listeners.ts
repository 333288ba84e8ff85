/**
 * A list of "something changed" listeners. emit() calls each one; a listener that throws or
 * returns a rejected promise is reported through `onError` and never stops the others.
 */
export class Listeners {
  private readonly list: Array<() => void> = [];

  constructor(private readonly onError: (err: unknown) => void) {}

  add(listener: () => void): void {
    this.list.push(listener);
  }

  emit(): void {
    for (const listener of this.list) {
      try {
        const r: unknown = listener();
        if (r instanceof Promise) r.catch((err: unknown) => this.onError(err));
      } catch (err) {
        this.onError(err);
      }
    }
  }
}
