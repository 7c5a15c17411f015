"""``flask spacio ...`` commands."""

from datetime import timedelta

import click
from flask import current_app
from flask.cli import AppGroup
from sqlalchemy import func, select

from spacio import mail
from spacio.auth import services as auth
from spacio.db import utcnow
from spacio.extensions import db
from spacio.mail import OutboxMessage

spacio_cli = AppGroup("spacio", help="Spacio administration.")


@spacio_cli.command("outbox")
@click.option("--to", "to", help="Only mail to this address.")
@click.option("-n", "limit", default=5, show_default=True, help="How many messages, newest first.")
def outbox(to, limit):
    """Print mail the embedded default kept in its outbox (invite and reset links)."""
    statement = select(OutboxMessage).order_by(OutboxMessage.created_at.desc()).limit(limit)
    if to:
        statement = statement.where(OutboxMessage.to == to.strip().lower())
    for message in db.session.scalars(statement):
        click.echo(f"--- {message.created_at.isoformat()} to {message.to}\nSubject: {message.subject}\n\n{message.body}")


@spacio_cli.command("cleanup")
@click.option("--outbox-days", default=30, show_default=True, help="Keep outbox mail this many days.")
def cleanup(outbox_days):
    """Delete dead sessions, spent reset links and old outbox mail (safe to run any time,
    e.g. daily from a scheduler)."""
    counts = auth.purge()
    counts["outbox"] = mail.purge_outbox(utcnow() - timedelta(days=outbox_days))
    click.echo(", ".join(f"{name}: {n} deleted" for name, n in counts.items()))


@spacio_cli.command("plugins")
def plugins():
    """List installed plugins per kind; * marks the ones this configuration uses."""
    from spacio.rag import registry

    for kind, items in registry().catalogue().items():
        click.echo(f"{kind}:")
        for item in items or [{"name": "(none installed)", "distribution": "", "version": "", "selected": False}]:
            mark = "*" if item["selected"] else " "
            click.echo(f"  {mark} {item['name']:<12} {item['distribution']} {item['version']}".rstrip())


@spacio_cli.command("ingest")
@click.argument("space_id", type=click.UUID)
@click.argument("paths", nargs=-1, required=True, type=click.Path(exists=True, dir_okay=True, readable=True))
@click.option("--as", "as_email", help="Upload as this member (an editor or owner); default: the space's owner.")
@click.option("--wait/--no-wait", default=True, show_default=True, help="Wait until every document is ingested.")
def ingest(space_id, paths, as_email, wait):
    """Upload files and folders (recursively) into a space, then show ingestion progress.

    With Redis configured, running `dramatiq tasks` workers do the work; otherwise this
    command's own in-process worker does."""
    import os
    import time

    from werkzeug.datastructures import FileStorage

    from spacio.auth.models import User
    from spacio.documents import services as documents
    from spacio.documents.models import UNFINISHED, Document
    from spacio.errors import SpacioError
    from spacio.spaces.models import Space

    space = db.session.get(Space, space_id)
    if space is None:
        raise click.ClickException(f"No space {space_id}.")
    user = (db.session.scalar(select(User).where(User.email == as_email.strip().lower())) if as_email
            else db.session.get(User, space.owner_id))
    if user is None:
        raise click.ClickException(f"No user {as_email}.")
    files = []
    for path in paths:
        if os.path.isdir(path):
            for root, dirs, names in os.walk(path):
                dirs.sort()
                files += [os.path.join(root, n) for n in sorted(names) if not n.startswith(".")]
        else:
            files.append(path)
    per_request = int(current_app.config["UPLOAD_MAX_FILES"])
    ids, queued = [], 0
    with click.progressbar(length=len(files), label="Uploading") as bar:
        for start in range(0, len(files), per_request):
            group = files[start:start + per_request]
            handles = [open(f, "rb") for f in group]
            try:
                storages = [FileStorage(stream=h, filename=os.path.basename(f)) for h, f in zip(handles, group)]
                docs, count = documents.add_documents(user, space.id, storages)
            except SpacioError as exc:
                raise click.ClickException(exc.message or exc.reason) from exc
            finally:
                for h in handles:
                    h.close()
            ids += [d.id for d in docs]
            queued += count
            bar.update(len(group))
    click.echo(f"{len(ids)} files, {queued} queued for ingestion, {len(ids) - queued} already there or rejected.")
    if not wait:
        return
    unique = list(dict.fromkeys(ids))
    with click.progressbar(length=len(unique), label="Ingesting") as bar:
        done = 0
        while done < len(unique):
            db.session.rollback()
            pending = db.session.scalar(select(func.count()).select_from(Document).where(
                Document.id.in_(unique), Document.status.in_(UNFINISHED)))
            bar.update(len(unique) - pending - done)
            done = len(unique) - pending
            if pending:
                time.sleep(0.5)
    rows = db.session.execute(select(Document.status, Document.error_reason, func.count())
                              .where(Document.id.in_(unique)).group_by(Document.status, Document.error_reason))
    for status, reason, n in sorted(rows, key=lambda r: (r[0], r[1] or "")):
        click.echo(f"  {status}{' (' + reason + ')' if reason else ''}: {n}")


@spacio_cli.command("reindex")
@click.argument("space_ids", nargs=-1, type=click.UUID)
@click.option("--all", "everything", is_flag=True,
              help="Every space whose index was built with other plugins than the server's current ones.")
@click.option("--wait/--no-wait", default=True, show_default=True, help="Wait until every reindex has finished.")
def reindex(space_ids, everything, wait):
    """Move spaces to the server's current plugins without a gap: each one's documents are
    indexed again beside the index that keeps answering, and the space switches when all are
    in (a failure leaves it as it was).

    With Redis configured, running `dramatiq tasks` workers do the work; otherwise this
    command's own in-process worker does."""
    import time

    from spacio.documents import services as documents
    from spacio.documents.models import IndexBuild
    from spacio.errors import SpacioError
    from spacio.rag import registry
    from spacio.rag.reindexing import progress
    from spacio.spaces.models import Space

    if bool(space_ids) == everything:
        raise click.UsageError("Name the spaces to reindex, or pass --all.")
    if everything:
        current = registry().pipeline()
        spaces = [s for s in db.session.scalars(select(Space).order_by(Space.created_at))
                  if {k: v for k, v in (s.pipeline or {}).items() if k != "namespace"} != current]
        click.echo(f"{len(spaces)} spaces use other plugins than the server's.")
    else:
        spaces = [db.session.get(Space, space_id) for space_id in space_ids]
        missing = [str(i) for i, s in zip(space_ids, spaces) if s is None]
        if missing:
            raise click.ClickException(f"No space {', '.join(missing)}.")
    builds = []
    for space in spaces:
        try:
            builds.append(documents.start_reindex(space))
        except SpacioError as exc:
            click.echo(f"  {space.id} ({space.name}): {exc.message or exc.reason}")
    if not wait or not builds:
        return
    with click.progressbar(length=1, label="Reindexing", show_pos=True) as bar:
        while True:
            db.session.rollback()
            found = [db.session.get(IndexBuild, build_id) for build_id in builds]
            counts = [progress(build) for build in found]
            bar.length = max(1, sum(c["total"] for c in counts))
            bar.update(sum(c["done"] + c["failed"] for c in counts) - bar.pos)
            if all(build.status != "building" for build in found):
                break
            time.sleep(0.5)
    for build, count in zip(found, counts):
        outcome = build.status if build.error is None else f"{build.status} ({build.error['reason']}: " \
                                                             f"{build.error['message']})"
        click.echo(f"  {build.space_id}: {outcome}; {count['done']} documents indexed, {count['failed']} failed")
