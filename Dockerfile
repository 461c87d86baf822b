FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1
WORKDIR /app
COPY requirements.txt .
RUN pip install --no-cache-dir -r requirements.txt
COPY api api
COPY worker worker
COPY shared shared

EXPOSE 8080
# The same commands the tests and the README run; docker-compose.yml picks one per service.
CMD ["python", "-m", "api"]
