"""One ``APIRouter`` per resource: runs, points, series (keys, latest, series), alerts, health."""
