"""The one batch rule of the pack: a per-row tensor for a batch of latents."""


def rows_for_batch(rows, batch, refuse):
    """`rows` [N, ...] for `batch` latents: N == batch maps i-th to i-th, N == 1 serves
    every latent (a view, no copy); any other count raises `refuse(N, batch)`."""
    if rows.shape[0] == batch:
        return rows
    if rows.shape[0] == 1:
        return rows.expand(batch, *rows.shape[1:])
    raise refuse(rows.shape[0], batch)
