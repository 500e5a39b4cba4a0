FROM python:3.11-slim
RUN apt-get update && apt-get install -y --no-install-recommends nodejs npm && rm -rf /var/lib/apt/lists/*
WORKDIR /app
COPY node_tools/package.json node_tools/package-lock.json node_tools/
RUN npm ci --prefix node_tools --no-audit --no-fund --loglevel=error
ENV PATH="/app/node_tools/node_modules/.bin:$PATH" PYTHONUNBUFFERED=1
COPY pyproject.toml README.md ./
RUN pip install --no-cache-dir .
COPY . .
RUN SECRET_KEY=build python manage.py collectstatic --noinput
EXPOSE 3000
CMD ["gunicorn", "gateway_project.asgi:application", "--config", "gateway_project/gunicorn.conf.py"]
